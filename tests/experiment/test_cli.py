"""python -m experiment report: the per-arm table and the verdict, for each log, a glob or the newest."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from experiment.__main__ import main
from experiment.log import REPO
from tests.experiment.conftest import synthetic_log


def test_report_cli_prints_the_table_and_the_verdict(populations, tmp_path):
    rng = np.random.default_rng(1)
    log = tmp_path / "log.csv"
    synthetic_log(
        {
            "model-a": rng.choice(populations["model-a"], 2000),
            "model-b": rng.choice(populations["model-worse"], 2000),
        }
    ).to_csv(log, index=False)
    run = subprocess.run(
        [sys.executable, "-m", "experiment", "report", str(log), str(tmp_path / "missing.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "cannot read the feedback log" in run.stderr  # the missing one
    assert "model-a wins: mean reward" in run.stdout and "RMSE model-a - model-b" in run.stdout
    assert "100.0% of 4000 rewards landed on the arm that served" in run.stdout


def test_report_takes_a_glob_or_the_newest_log_and_says_which(populations, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(2)
    for name in ("feedback-arm-1.csv", "feedback-arm-2.csv"):
        synthetic_log(
            {
                "model-a": rng.choice(populations["model-a"], 50),
                "model-b": rng.choice(populations["model-a"], 50),
            }
        ).to_csv(tmp_path / name, index=False)
    assert main(["report", str(tmp_path / "feedback-arm-*.csv")]) == 0
    out = capsys.readouterr().out
    assert out.count("== ") == 2 and f"== {tmp_path / 'feedback-arm-2.csv'}" in out  # each on its own

    monkeypatch.setattr("experiment.log.RUNS", tmp_path)  # not the reader's runs/
    assert main(["report"]) == 0
    captured = capsys.readouterr()
    assert (
        "using the newest log:" in captured.err and "no decision between model-a and model-b" in captured.out
    )
    assert main(["report", str(tmp_path / "nothing-*.csv")]) == 1
    assert "no feedback log matches" in capsys.readouterr().err
