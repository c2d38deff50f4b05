"""feedback.replay(..., monitor=...) and experiment.run_monitored on the real local stack (A/B, 50/50):
the replay stops when the sequential test decides, the log records the look, and promotion follows
the gate - with the test, n per arm, estimate, interval, p/e-value, SRM and guardrails recorded."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import experiment
import feedback
from experiment import monitored, sequential
from experiment.run_monitor import RunMonitor
from serving.endpoints import Endpoints

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def endpoints(stack) -> Endpoints:
    return Endpoints.local(stack.state_dir)


def test_a_monitored_replay_stops_when_the_test_decides_and_the_log_records_the_look(
    stack, endpoints, tmp_path
):
    # a design that decides within a few hundred requests: any effect of 0.2 or none at all
    design = sequential.Design(mde=0.2, n_max=400, sd=0.25, min_n=30)
    monitor = RunMonitor(design, "model-b", ["model-a"], metrics_url=endpoints.ingress_url)
    concurrency = 4
    result = feedback.replay(
        endpoints, concurrency=concurrency, log_path=tmp_path / "log.csv", progress=False, monitor=monitor
    )
    log = pd.read_csv(result.path)
    assert monitor.stopped and result.decision == monitor.decision != sequential.CONTINUE
    assert result.look == monitor.look and f"stopped at look {monitor.look:,}" in result.summary()
    # the rows not yet sent were not sent; those in flight were logged as such
    assert len(log) < len(feedback.holdout_rows())
    assert sorted(log["look"]) == list(range(1, len(log) + 1))
    stop = log[log["look"] == monitor.look]
    assert stop["decision"].item() == monitor.decision
    assert (log.loc[log["look"] < monitor.look, "decision"] == sequential.CONTINUE).all()
    after = log[log["look"] > monitor.look]
    assert (after["decision"] == feedback.AFTER_STOP).all() and len(after) <= concurrency - 1
    # the test recomputed from the log, in look order up to the test's look, agrees with the monitor
    rows = experiment.served_rows(log.sort_values("look"))
    offline = sequential.monitor(rows[rows["look"] <= monitor.test_look], "model-b", "model-a", design)
    assert offline.decision == monitor.monitors["model-a"].decision
    assert offline.look == monitor.monitors["model-a"].stopped_at


def test_run_monitored_plans_runs_stops_and_promotion_follows_the_gate(stack, endpoints, tmp_path):
    manifest = stack.manifest_path
    plan = experiment.plan_experiment(manifest, control="model-b")
    assert (plan.control, plan.treatment) == ("model-b", "model-a") and plan.n_fixed > 0
    result = experiment.run_monitored(
        endpoints,
        plan,
        state_dir=stack.state_dir,
        prometheus_url=stack.prometheus_url,
        log_path=tmp_path / "monitored.csv",
    )
    assert result.decision in (sequential.WINNER, sequential.HARM, sequential.FUTILITY, sequential.PLANNED_N)
    assert result.test.adjusted  # CUPED covariates from the registered models themselves
    assert [s.source for s in result.srm] == ["log", "Prometheus"]
    # Prometheus counted every prediction the gateway answered, the log those it recorded
    assert sum(result.srm[1].counts.values()) >= sum(result.srm[0].counts.values())
    assert {r.name.split(" ")[0] for r in result.guardrails["model-a"]} == {"latency", "error"}
    assert result.look is not None and result.test_look <= result.look
    assert result.replay.sent < len(feedback.holdout_rows()) or result.decision == sequential.PLANNED_N
    assert result.sentence.startswith(result.decision) and "sample ratio" in result.sentence
    assert set(result.seconds) == {"run", "analysis"}

    record = tmp_path / "promotions.json"
    outcome = experiment.promote(
        result.replay.path, manifest=manifest, record=record, state_dir=stack.state_dir, decision=result
    )
    if result.gate.allowed:
        assert outcome.promoted and result.gate.promote in outcome.message
        entry = json.loads(record.read_text())[str(manifest.resolve())][-1]
        audit = entry["audit"]
        test = audit["tests"]["model-a"]
        for key in ("test", "n", "difference", "interval", "p_value", "e_value"):
            assert key in test
        assert audit["srm"][0]["source"] == "log" and "p_value" in audit["srm"][1]
        assert {g["status"] for g in audit["guardrails"]["model-a"]} == {"pass"}
        experiment.rollback(manifest, record, state_dir=stack.state_dir)
    else:
        assert not outcome.changed and "no promotion" in outcome.message
        assert all(reason in outcome.message for reason in result.gate.reasons)


def test_the_decision_record_is_json(stack, endpoints, tmp_path):
    """What run_monitored returns can be written as is (promotion's record, the notebook's summary)."""
    design = sequential.Design(mde=0.2, n_max=200, sd=0.25, min_n=30)
    plan = monitored.planning.Plan("model-b", "model-a", {}, {}, 0.2, 0.05, 0.8, 100, design)
    result = experiment.run_monitored(
        endpoints, plan, state_dir=stack.state_dir, covariates=False, log_path=tmp_path / "log.csv"
    )
    json.dumps(result.record())
    assert len(result.srm) == 1 and not result.test.adjusted


def test_feedback_monitor_command(stack, tmp_path, capsys):
    log = tmp_path / "cli.csv"
    assert (
        feedback.main(["--monitor", "model-b", "--state-dir", str(stack.state_dir), "--log", str(log)]) == 0
    )
    out = capsys.readouterr().out
    assert "planned before traffic" in out and "sample ratio" in out and f"log: {log}" in out
    assert {"look", "decision"} <= set(pd.read_csv(log).columns)
