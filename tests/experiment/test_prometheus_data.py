"""experiment.prometheus_data: exact counts from raw samples, across restarts, and a replay's true pace."""

from __future__ import annotations

import math
import os
import signal
import time

import pandas as pd
import pytest

import experiment
import feedback
from experiment.prometheus_data import _increase, scrape_rates
from serving import prometheus
from serving.prometheus import SCRAPE_INTERVAL_SECONDS
from tests.experiment.conftest import replay_window


def test_counter_increase_is_exact_across_resets():
    samples = [(1.0, 5.0), (3.0, 8.0), (5.0, 2.0), (7.0, 4.0)]  # a restart between 3 and 5
    assert _increase(samples, since=2.0) == 3 + 2 + 2
    assert _increase(samples, since=None) == 5 + 3 + 2 + 2
    assert _increase(samples, since=9.0) == 0


@pytest.mark.stack
def test_scrape_rates_show_the_replays_steady_pace_and_count_every_request(stack, tmp_path):
    """A replay at 100 rows/s for 8 s: between scrapes the arms add up to that pace, and to every request."""
    result, _, _ = replay_window(stack, limit=800, rate=100, log_path=tmp_path / "paced.csv")
    experiment.wait_for_scrape(stack.prometheus_url, result.finished)
    rates = scrape_rates(stack.prometheus_url, result.started, result.finished, service="predictions")
    arms = result.log.groupby("arm").size()
    assert sorted(rates.columns) == sorted(arms.index) and (rates >= 0).all().all()
    # every prediction of the replay, and nothing else, is in the intervals (each one scrape long)
    assert (rates.sum() * SCRAPE_INTERVAL_SECONDS).to_numpy() == pytest.approx(arms.to_numpy(), rel=0.01)
    # the whole intervals inside the replay run at its pace (no ramp, which read 20 -> 80 -> 20 for a
    # steady 150/s): within 30% of what the log measured. Prometheus stamps a sample with the scrape's
    # start, while a busy target answers later, so one interval can read a quarter high on a loaded machine
    pace = len(result.log) / (result.finished - result.started)
    inside = rates.sum(axis=1).iloc[1:-1]
    assert len(inside) >= 2 and ((inside - pace).abs() < 0.3 * pace).all(), (pace, inside.tolist())


@pytest.mark.stack
@pytest.mark.slow
def test_cross_check_is_exact_across_a_model_server_restart_and_names_a_mismatch(trio, tmp_path):
    """Kill model-worse mid-test: its restarted process is a new series (new worker_id), summed."""
    stack, manifest = trio
    url = stack.prometheus_url
    before, since, _ = replay_window(stack, limit=150, log_path=tmp_path / "before.csv")
    old_pid = stack.state["processes"]["model-worse"]["pid"]
    experiment.wait_for_scrape(url, time.time())  # the old process's counts are in Prometheus
    os.killpg(old_pid, signal.SIGKILL)  # a process group the stack (this test) started
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        state = stack.state["processes"]["model-worse"]
        if state["ready"] and state["pid"] != old_pid:
            break
        time.sleep(0.2)
    else:
        pytest.fail("model-worse did not come back within 180 s")
    after = feedback.replay(
        feedback.Endpoints.local(stack.state_dir), limit=150, log_path=tmp_path / "after.csv", progress=False
    )
    log = pd.concat([before.log, after.log], ignore_index=True)
    end = time.time()

    table = experiment.cross_check(log, url, since=since, until=end)
    assert table.loc["model-worse", "prometheus"] == (log["feedback_arm"] == "model-worse").sum()
    workers = {
        r["metric"]["worker_id"]
        for r in prometheus.query(
            url,
            f'{experiment.FEEDBACK}{{predictor_name="model-worse"}}[{math.ceil(time.time() - since) + 5}s]',
        )
    }
    assert len(workers) >= 2, workers  # the old process's series and the new one's

    # and a log that lost rows no longer adds up: the error names both numbers
    short = log.drop(index=log.index[log["feedback_arm"] == "model-a"][:3])
    n_a = int((log["feedback_arm"] == "model-a").sum())
    with pytest.raises(
        experiment.CrossCheckError, match=f"model-a: log {n_a - 3} accepted, Prometheus counted {n_a}"
    ):
        experiment.cross_check(short, url, since=since, until=end)
