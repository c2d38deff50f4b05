"""experiment.attribution: where each reward landed, from the log, and what Prometheus makes of it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import experiment
import feedback
from serving import deployment as sdep
from tests.experiment.conftest import replay_window, synthetic_log


def test_attribution_counts_where_each_reward_landed():
    log = synthetic_log({"model-a": np.array([0.0, 0.0, 1.0, 1.0]), "model-b": np.array([3.0, 3.0])})
    log.loc[[0, 4], "feedback_arm"] = ["model-b", "model-a"]  # two rewards landed on the other arm
    r0, r1, r3 = (feedback.reward(e, 0.0) for e in (0.0, 1.0, 3.0))
    result = experiment.attribution(log)
    assert result.fraction == pytest.approx(4 / 6) and result.n == 6
    table = result.table
    assert table.loc["model-a", "true_mean_reward"] == pytest.approx(np.mean([r0, r0, r1, r1]))
    assert table.loc["model-a", "dashboard_mean_reward"] == pytest.approx(np.mean([r0, r1, r1, r3]))
    assert table.loc["model-b", "dashboard_mean_reward"] == pytest.approx(np.mean([r0, r3]))


@pytest.mark.stack
def test_feedback_to_the_serving_arm_lands_there_and_nothing_is_lost(stack, tmp_path):
    result, since, end = replay_window(stack, limit=300, log_path=tmp_path / "arm.csv")
    log = result.log
    assert (log["feedback_status"] == 200).sum() == len(log) == 300  # every row replayed got a 200
    assert experiment.attribution(log).fraction == 1.0
    table = experiment.cross_check(log, stack.prometheus_url, since=since, until=end)
    assert table["prometheus"].sum() == table["log"].sum() == 300
    assert set(table.index) == set(sdep.load(stack.manifest_path).traffic)


@pytest.mark.stack
def test_feedback_through_the_ingress_lands_on_the_wrong_arm_measurably(stack, tmp_path):
    traffic = sdep.load(stack.manifest_path).traffic
    result, since, end = replay_window(
        stack, limit=300, feedback_via="ingress", log_path=tmp_path / "ingress.csv"
    )
    attributed = experiment.attribution(result.log)
    # a feedback lands on the serving arm only when the ingress happens to pick it again
    expected = sum((w / 100) ** 2 for w in traffic.values())
    assert attributed.fraction < 0.75, attributed.summary()
    assert stats.binomtest(round(attributed.fraction * attributed.n), attributed.n, expected).pvalue > 1e-4

    # Prometheus counts the feedback where it landed - exactly what the log says ...
    experiment.cross_check(result.log, stack.prometheus_url, since=since, until=end)
    rewards = experiment.counter_increase(stack.prometheus_url, experiment.REWARD, since)
    counts = experiment.counter_increase(stack.prometheus_url, experiment.FEEDBACK, since)
    dashboard = (rewards / counts).sort_index()
    # ... so the dashboard's mean reward is the log grouped by the counting arm (float32 sums),
    table = attributed.table.sort_index()
    assert dashboard.to_numpy() == pytest.approx(table["dashboard_mean_reward"].to_numpy(), rel=1e-5)
    # which is not each model's own mean reward
    assert (table["dashboard_mean_reward"] - table["true_mean_reward"]).abs().max() > 1e-4, (
        attributed.summary()
    )
