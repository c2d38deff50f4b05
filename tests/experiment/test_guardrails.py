"""Guardrails: a slow arm and a failing arm breach, a healthy one passes, too little data is inconclusive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiment import guardrails as g


def _latencies(rng, n, scale):
    return rng.lognormal(np.log(2.0 * scale), 0.3, n)


def test_latency_breach_pass_and_inconclusive():
    rng = np.random.default_rng(0)
    slow = g.latency(_latencies(rng, 800, 1), _latencies(rng, 800, 2), "a", "b")
    assert slow.status == g.BREACH and slow.bound[0] > g.GUARDRAILS.latency_ratio_margin
    same = g.latency(_latencies(rng, 2000, 1), _latencies(rng, 2000, 1), "a", "b")
    assert same.status == g.PASS and same.bound[1] < g.GUARDRAILS.latency_ratio_margin
    assert same.p_value < g.GUARDRAILS.alpha
    few = g.latency(_latencies(rng, 15, 1), _latencies(rng, 15, 1.1), "a", "b")
    assert few.status == g.INCONCLUSIVE


def test_error_rate_breach_and_pass():
    failing = g.error_rate({"a": 2, "b": 90}, {"a": 1000, "b": 1000}, "a", "b")
    assert failing.status == g.BREACH and not failing.ok
    healthy = g.error_rate({"a": 0, "b": 0}, {"a": 2000, "b": 2000}, "a", "b")
    assert healthy.status == g.PASS
    few = g.error_rate({"a": 0, "b": 0}, {"a": 30, "b": 30}, "a", "b")
    assert few.status == g.INCONCLUSIVE
    with pytest.raises(ValueError, match="errors"):
        g.error_rate({"a": 5, "b": 0}, {"a": 3, "b": 10}, "a", "b")


def test_from_log():
    rng = np.random.default_rng(1)
    n = 1500
    arm = np.where(rng.random(n) < 0.5, "a", "b")
    log = pd.DataFrame(
        {
            "arm": arm,
            "predict_ms": np.where(arm == "a", _latencies(rng, n, 1), _latencies(rng, n, 1)),
            "predict_status": 200,
        }
    )
    results = g.from_log(log, "a", "b")
    assert [r.status for r in results] == [g.PASS, g.PASS] and g.all_pass(results)
    log.loc[(log["arm"] == "b") & (rng.random(n) < 0.2), "predict_status"] = 500
    results = g.from_log(log, "a", "b")
    assert results[1].status == g.BREACH and g.breached(results) == [results[1]]
    assert set(results[0].record()) >= {"name", "margin", "bound", "status", "n"}


def test_gate_blocks_on_srm_guardrails_or_no_winner():
    from experiment import sequential as seq
    from experiment import srm

    rng = np.random.default_rng(2)
    n = 3000
    arm = np.where(rng.random(n) < 0.5, "b", "a")
    log = pd.DataFrame(
        {
            "request_id": np.arange(n),
            "arm": arm,
            "reward": np.clip(rng.normal(0.7, 0.2, n) + np.where(arm == "b", 0.08, 0.0), 0, 1),
            "predict_ms": _latencies(rng, n, 1),
            "predict_status": 200,
        }
    )
    test = seq.monitor(log, "a", "b", seq.Design(mde=0.05, n_max=1500, sd=0.2, futility=False))
    sound = srm.srm(log, {"a": 50, "b": 50})
    healthy = g.from_log(log, "a", "b")
    ok = g.gate(sound, healthy, test)
    assert ok.allowed and ok.promote == "b" and ok.reasons == []
    assert set(ok.record) == {"srm", "guardrails", "test"}
    broken = srm.check_srm({"a": 1400, "b": 1000}, {"a": 50, "b": 50})
    assert not g.gate(broken, healthy, test).allowed
    slow = g.latency(_latencies(rng, 800, 1), _latencies(rng, 800, 2), "a", "b")
    blocked = g.gate(sound, [slow, healthy[1]], test)
    assert not blocked.allowed and "latency" in blocked.sentence
    flat = seq.monitor(
        log.assign(reward=0.7 + rng.normal(0, 0.2, n)), "a", "b", seq.Design(mde=0.05, n_max=1500)
    )
    assert not g.gate(sound, healthy, flat).allowed
