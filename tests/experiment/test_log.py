"""experiment.log: reading feedback.py's logs - one, several, a glob, the newest - and clear errors."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import experiment
from experiment.log import describe, log_paths, newest_log, read_log
from experiment.promql import rate_window
from tests.experiment.conftest import synthetic_log


def test_bad_logs_get_a_clear_error(tmp_path):
    good = synthetic_log({"model-a": np.array([0.1, 0.2, 0.3]), "model-b": np.array([0.4, 0.5, 0.6])})
    with pytest.raises(experiment.LogError, match="reward"):
        experiment.verdict(good.drop(columns="reward"))
    with pytest.raises(experiment.LogError, match="two arms"):
        experiment.verdict(good[good["arm"] == "model-a"])
    three = pd.concat([good, good.assign(arm="model-c")])
    with pytest.raises(experiment.LogError, match="two arms"):
        experiment.verdict(three)
    assert experiment.verdict(three, arms=("model-a", "model-c")).first in ("model-a", "model-c")
    with pytest.raises(experiment.LogError, match="finite"):
        experiment.verdict(good.assign(reward=[0.5, np.nan, 0.5, 0.5, 0.5, 0.5]))
    with pytest.raises(experiment.LogError, match="fewer than 2"):
        experiment.verdict(good.drop(index=[1, 2]))
    with pytest.raises(experiment.LogError, match="cannot read"):
        experiment.verdict(tmp_path / "missing.csv")
    with pytest.raises(experiment.LogError, match="feedback_arm"):
        experiment.attribution(good.drop(columns="feedback_arm"))
    with pytest.raises(ValueError, match="factor of at least 4"):
        rate_window(2, factor=2)
    with pytest.raises(experiment.LogError, match="no feedback log matches"):
        experiment.verdict(str(tmp_path / "nothing-*.csv"))
    with pytest.raises(experiment.LogError, match="expected a feedback log"):
        experiment.verdict(42)


def test_several_logs_and_globs_are_read_as_one_experiment(tmp_path):
    first = synthetic_log({"model-a": np.array([0.1, 0.2]), "model-b": np.array([0.3])})
    second = synthetic_log({"model-a": np.array([0.4]), "model-b": np.array([0.5, 0.6])})
    first.to_csv(tmp_path / "feedback-arm-1.csv", index=False)
    second.to_csv(tmp_path / "feedback-arm-2.csv", index=False)
    both = pd.concat([pd.read_csv(tmp_path / f"feedback-arm-{i}.csv") for i in (1, 2)], ignore_index=True)

    for log in (
        [tmp_path / "feedback-arm-1.csv", tmp_path / "feedback-arm-2.csv"],
        str(tmp_path / "feedback-arm-*.csv"),
        (str(tmp_path / "feedback-arm-1.csv"), str(tmp_path / "feedback-arm-[2].csv")),
    ):
        pd.testing.assert_frame_equal(read_log(log), both)
    assert log_paths(str(tmp_path / "*.csv")) == [
        tmp_path / "feedback-arm-1.csv",
        tmp_path / "feedback-arm-2.csv",
    ]
    assert describe(str(tmp_path / "*.csv")) == [
        str((tmp_path / f"feedback-arm-{i}.csv").resolve()) for i in (1, 2)
    ]
    assert len(both) == len(first) + len(second) == 6
    assert describe(both) == "in-memory DataFrame, 6 rows"
    assert read_log(both) is both


def test_newest_log_is_the_last_written_and_missing_logs_say_how_to_make_one(tmp_path):
    with pytest.raises(experiment.LogError, match="replay first"):
        newest_log(folder=tmp_path)
    for i, name in enumerate(("feedback-arm-b.csv", "feedback-arm-a.csv", "feedback-ingress-c.csv")):
        (tmp_path / name).write_text("arm\n")
        os.utime(tmp_path / name, (1_000_000 + i, 1_000_000 + i))
    assert newest_log(folder=tmp_path) == tmp_path / "feedback-arm-a.csv"  # by time, not by name
    assert newest_log("feedback-*.csv", tmp_path) == tmp_path / "feedback-ingress-c.csv"
