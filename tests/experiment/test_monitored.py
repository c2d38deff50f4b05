"""experiment.monitored without a stack: the monitor a replay calls, and the decision from its log.

The rows are simulated (the stack tests replay real traffic): rewards drawn per arm, in the order
requests complete, fed one at a time as feedback.replay feeds them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import feedback
from experiment import cuped, guardrails, monitored, planning, sequential
from experiment.run_monitor import GUARDRAIL_BREACH, MIN_LATENCIES, RunMonitor

DESIGN = sequential.Design(mde=0.05, n_max=2000, sd=0.2)
FAST = guardrails.GuardrailConfig(resamples=300)  # fewer bootstrap resamples where many checks run


def simulated_log(
    means: dict, n: int, seed: int = 0, latency: dict | None = None, weights=None
) -> pd.DataFrame:
    """A feedback.py log: one served row per request, arms drawn with ``weights``, rewards normal."""
    rng = np.random.default_rng(seed)
    arms = list(means)
    p = None if weights is None else np.asarray(weights, dtype=float) / sum(weights)
    served = rng.choice(arms, size=n, p=p)
    latency = latency or {}
    return pd.DataFrame(
        {
            "request_id": np.arange(n) + 1000,
            "arm": served,
            "truth": 6.0,
            "prediction": 6.0,
            "reward": [rng.normal(means[a], 0.2) for a in served],
            "predict_ms": [rng.gamma(4, latency.get(a, 1.0) / 4) for a in served],
            "predict_status": 200,
            "feedback_status": 200,
        }
    )


def feed(monitor: RunMonitor, log: pd.DataFrame) -> pd.DataFrame:
    """What feedback.replay does with each completed row: number the look, ask the monitor."""
    looks, decisions = [], []
    for i, row in enumerate(log.to_dict("records"), start=1):
        looks.append(i)
        decisions.append(feedback.AFTER_STOP if monitor.stopped else monitor.add(row))
    return log.assign(look=looks, decision=decisions)


def test_the_monitor_stops_where_the_test_on_the_log_stops():
    log = simulated_log({"b": 0.76, "a": 0.85}, 3000)
    monitor = RunMonitor(DESIGN, "b", ["a"])
    fed = feed(monitor, log)
    assert monitor.decision == sequential.WINNER and monitor.look is not None
    # the log records it: one row holds the decision, every later row was not looked at
    stop = fed[fed["look"] == monitor.look]
    assert stop["decision"].item() == sequential.WINNER
    assert (fed.loc[fed["look"] < monitor.look, "decision"] == sequential.CONTINUE).all()
    assert (fed.loc[fed["look"] > monitor.look, "decision"] == feedback.AFTER_STOP).all()
    # the same test recomputed from the log up to that look (what decide() reports) agrees
    offline = sequential.monitor(fed[fed["look"] <= monitor.look], "b", "a", DESIGN)
    assert (offline.decision, offline.look) == (monitor.decision, monitor.test_look)
    assert monitor.look < len(log)  # it stopped early: fewer requests than the log had
    # with a winner, the run went on until the guardrails passed (the error rate needs a few hundred)
    assert monitor.test_look <= monitor.look
    assert all(r.ok for r in monitor.results) and len(monitor.results) == 2


def test_an_adjusted_monitor_reads_each_requests_covariates_by_request_id():
    log = simulated_log({"b": 0.76, "a": 0.80}, 3000, seed=3)
    rng = np.random.default_rng(1)
    # a covariate that predicts the reward's noise: the adjusted test needs fewer requests
    noise = log["reward"] - log["arm"].map({"b": 0.76, "a": 0.80})
    x = noise + rng.normal(0, 0.1, len(log))
    table = pd.DataFrame(
        {cuped.column("a"): x.to_numpy(), cuped.column("b"): x.to_numpy()}, index=log["request_id"]
    )
    raw, adjusted = RunMonitor(DESIGN, "b", ["a"]), RunMonitor(DESIGN, "b", ["a"], covariates=table)
    feed(raw, log), feed(adjusted, log)
    assert adjusted.monitors["a"].adjusted and adjusted.decision == sequential.WINNER
    # the raw test needed more requests to decide anything (or gave up: futility)
    assert raw.decision == sequential.FUTILITY or adjusted.test_look < raw.test_look
    with pytest.raises(KeyError):  # a request without its covariate is an error, not a silent skip
        RunMonitor(DESIGN, "b", ["a"], covariates=table.iloc[:10]).add(log.iloc[20].to_dict())


def test_a_slow_challenger_breaches_the_latency_guardrail_and_the_breach_rolls_back():
    calls = []
    log = simulated_log({"b": 0.8, "a": 0.8}, 1000, latency={"b": 2.0, "a": 20.0})
    monitor = RunMonitor(
        DESIGN, "b", ["a"], check_every=50, on_breach=lambda arm, r: calls.append(arm) or "rolled"
    )
    fed = feed(monitor, log)
    assert monitor.decision == GUARDRAIL_BREACH
    # the first check at which both arms had MIN_LATENCIES latencies
    counts = log["arm"].eq("a").cumsum(), log["arm"].eq("b").cumsum()
    ready = (counts[0] >= MIN_LATENCIES) & (counts[1] >= MIN_LATENCIES) & ((log.index + 1) % 50 == 0)
    assert monitor.look == int(ready.idxmax()) + 1
    assert calls == ["a"] and monitor.rollback == "rolled"
    assert "latency p95" in monitor.reason and "breach" in monitor.reason
    assert (fed["decision"] == GUARDRAIL_BREACH).sum() == 1


def test_equal_latencies_pass_and_the_run_goes_on():
    log = simulated_log({"b": 0.8, "a": 0.8}, 400, latency={"b": 2.0, "a": 2.0})
    monitor = RunMonitor(DESIGN, "b", ["a"], check_every=50)
    feed(monitor, log)
    assert monitor.decision != GUARDRAIL_BREACH and monitor.checks == 8


def test_a_b_n_tests_each_challenger_at_alpha_over_k_and_stops_at_the_first_winner():
    log = simulated_log({"c": 0.70, "a": 0.82, "b": 0.78}, 6000, seed=2)
    monitor = RunMonitor(DESIGN, "c", ["a", "b"], config=FAST)
    feed(monitor, log)
    assert monitor.design.alpha == pytest.approx(DESIGN.alpha / 2)
    assert monitor.decision == sequential.WINNER
    assert any(m.decision == sequential.WINNER for m in monitor.monitors.values())
    # it stopped (once the winner's guardrails passed) after the first winner, not before
    earlier = RunMonitor(DESIGN, "c", ["a", "b"], config=FAST)
    feed(earlier, log.head(monitor.look - 1))
    assert not earlier.stopped
    assert "α/2" in monitor.reason


def replayed(log: pd.DataFrame) -> feedback.ReplayResult:
    return feedback.ReplayResult(log=log, seconds=1.0)


def plan_for(design=DESIGN) -> planning.Plan:
    return planning.Plan("b", "a", {"b": 0.76, "a": 0.85}, {"b": 0.2, "a": 0.2}, 0.05, 0.05, 0.8, 300, design)


def test_decide_gates_on_the_split_a_broken_split_blocks_promotion():
    # arm a served three times as often as a 50/50 split expects: a winner, but not trustworthy
    log = simulated_log({"b": 0.76, "a": 0.85}, 3000, weights=[1, 3])
    monitor = RunMonitor(DESIGN, "b", ["a"])
    fed = feed(monitor, log)
    result = monitored.decide(replayed(fed), plan_for(), "b", {"b": 50.0, "a": 50.0}, None, monitor)
    assert result.decision == sequential.WINNER
    assert result.srm[0].mismatch and not result.gate.allowed
    assert "sample ratio mismatch" in result.gate.sentence and "sample ratio mismatch" in result.sentence
    record = result.record()
    assert record["tests"]["a"]["look"] == monitor.test_look and record["srm"][0]["mismatch"]


def test_decide_promotes_a_winner_with_a_sound_split_and_passing_guardrails():
    log = simulated_log({"b": 0.76, "a": 0.85}, 3000, seed=5)
    monitor = RunMonitor(DESIGN, "b", ["a"])
    fed = feed(monitor, log)
    result = monitored.decide(replayed(fed), plan_for(), "b", {"b": 50.0, "a": 50.0}, None, monitor)
    assert result.gate.allowed and result.gate.promote == "a", result.gate.reasons
    assert [r.status for r in result.guardrails["a"]] == [guardrails.PASS, guardrails.PASS]
    assert result.test.look == monitor.test_look <= result.look == monitor.look
    figure = result.figure()
    assert len(figure.axes) == 2
    table = result.guardrail_table()
    assert list(table["status"]) == ["pass", "pass"]


def test_feedback_monitor_without_a_stack_says_so(tmp_path, capsys):
    assert feedback.main(["--monitor", "model-b", "--state-dir", str(tmp_path / "no-stack")]) == 1
    assert "no local stack is running" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a cluster has no working copy for the rollback to edit
        feedback.main(["--monitor", "model-b", "--ingress", "127.0.0.1:9", "--predictor", "a=127.0.0.1:9"])


def test_covariates_still_being_computed_hold_the_rows_and_then_give_the_same_test():
    from concurrent.futures import Future

    log = simulated_log({"b": 0.76, "a": 0.82}, 3000, seed=4)
    x = log["reward"] + np.random.default_rng(2).normal(0, 0.1, len(log))
    table = pd.DataFrame(
        {cuped.column("a"): x.to_numpy(), cuped.column("b"): x.to_numpy()}, index=log["request_id"]
    )
    ready = RunMonitor(DESIGN, "b", ["a"], covariates=table)
    feed(ready, log)
    later = Future()
    pending = RunMonitor(DESIGN, "b", ["a"], covariates=later)
    rows = log.to_dict("records")
    for row in rows[:60]:  # fewer than the first look needs
        assert pending.add(row) == sequential.CONTINUE
    assert len(pending.waiting) == 60
    later.set_result(table)
    for row in rows[60:]:
        if pending.add(row) != sequential.CONTINUE:
            break
    assert (pending.decision, pending.look, pending.test_look) == (
        ready.decision,
        ready.look,
        ready.test_look,
    )


def test_a_winner_stops_only_once_its_latency_passes_the_final_check_too():
    """The run's checks use fewer resamples than the final one (decide); the stop waits for a pass the
    final check confirms, so the run does not stop where promotion is then refused."""
    log = simulated_log({"b": 0.76, "a": 0.85}, 1200, seed=5, latency={"b": 2.0, "a": 2.2})
    run_config = guardrails.GuardrailConfig(resamples=300)
    # what the final check demands here (same resamples, to keep this quick; the margin differs)
    stricter = guardrails.GuardrailConfig(resamples=300, latency_ratio_margin=1.0)
    lenient = RunMonitor(DESIGN, "b", ["a"], config=run_config)
    feed(lenient, log)
    assert lenient.decision == sequential.WINNER  # a 10% slower challenger passes a 1.2 margin
    strict = RunMonitor(DESIGN, "b", ["a"], config=run_config, final_config=stricter)
    feed(strict, log)
    strict.finish()  # what run_monitored calls after the last row
    assert strict.decision == sequential.WINNER and strict.look == len(log)  # stopped by the rows running out
    assert "had not passed" in strict.reason
    assert strict.checks > lenient.checks  # it kept checking; the confirmation ran once per check
