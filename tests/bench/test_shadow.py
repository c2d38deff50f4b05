"""`bench/shadow.py` end to end at tiny sizes: every part runs on the real local stack and its
numbers are computed and consistent; the committed bench/results.json is left untouched.

It serves the session's trained arms (``--tracking-uri``) on a stack of its own, on free ports;
results go to a temporary file. No timing goal is asserted here (bench/ prints those).
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
from pathlib import Path

import pytest

from tests.bench.script import run_script

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "bench" / "results.json"
ROWS, REQUESTS, SIMULATIONS = 60, 30, 50


def run_shadow(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return run_script("bench.shadow", args, timeout)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_result(result: dict) -> None:
    """What every run must hold, whatever its size: the numbers are computed and consistent."""
    from bench.load import closed_loop
    from bench.shadow import WARMUP

    warmup_per_run = inspect.signature(closed_loop).parameters["warmup"].default

    latency = result["latency"]
    for name in ("with_shadow", "without_shadow", "without_shadow_or_logging"):
        run = latency[name]
        assert run["p50_ms"] > 0 and run["p99_ms"] >= run["p50_ms"], (name, run)
    assert result["shadow_added_p50_ms"] == pytest.approx(
        latency["with_shadow"]["p50_ms"] - latency["without_shadow"]["p50_ms"]
    )
    assert result["shadow_added_p99_ms"] == pytest.approx(
        latency["with_shadow"]["p99_ms"] - latency["without_shadow"]["p99_ms"]
    )
    assert len(latency["shadow_added_p50_ms_by_fifth"]) == 5
    assert all(finite(v) and v >= 0 for v in latency["cpu_us_per_round"].values())
    concurrent = result["concurrent"]
    for name in ("with_shadow", "without_shadow"):
        assert concurrent[name]["p50_ms"] > 0 and concurrent[name]["rps"] > 0, (name, concurrent[name])
        assert concurrent[name]["concurrency"] == concurrent["callers"] == 4
    assert concurrent["shadow_added_p50_ms"] == pytest.approx(
        concurrent["with_shadow"]["p50_ms"] - concurrent["without_shadow"]["p50_ms"]
    )
    assert concurrent["throughput_ratio"] == pytest.approx(
        concurrent["with_shadow"]["rps"] / concurrent["without_shadow"]["rps"]
    )
    # every prediction was mirrored or its skip counted (a shadow that cannot keep up loses mirrors,
    # as with Istio): in the replay, the latency rounds and the concurrent runs
    replay, mirrors = result["replay"], result["mirrors"]
    assert mirrors["replay"]["mirrored"] + mirrors["replay"]["skipped"] == replay["rows"]
    rounds = latency["with_shadow"]["requests"] + WARMUP
    assert mirrors["latency"]["mirrored"] + mirrors["latency"]["skipped"] == rounds
    runs = concurrent["rounds"] * (concurrent["requests_per_run"] + warmup_per_run)
    assert mirrors["concurrent"]["mirrored"] + mirrors["concurrent"]["skipped"] == runs
    # every replayed row answered; a row whose mirror was skipped has no shadow answer to pair with
    assert replay["errors"] == 0 and replay["paired_rows"] + replay["unpaired_main_only"] == replay["rows"]
    assert replay["unpaired_main_only"] >= mirrors["replay"]["skipped"] and replay["paired_rows"] > 0
    sizes = result["required_requests"]
    assert 0 < sizes["paired"] < sizes["ab_total"] == pytest.approx(2 * sizes["ab_per_arm"])
    assert result["ab_over_paired_requests"] == pytest.approx(sizes["ab_total"] / sizes["paired"])
    power = result["measured_power_at_those_sizes"]
    assert 0 <= power["paired"] <= 1 and 0 <= power["ab"] <= 1
    goals = result["goals"]
    assert goals["shadow_added_p50_ms"]["met"] == (result["shadow_added_p50_ms"] <= 0.2)
    assert goals["ab_over_paired_requests"]["met"] == (result["ab_over_paired_requests"] >= 5.0)


@pytest.mark.stack
@pytest.mark.slow
def test_the_shadow_benchmark_runs_on_the_local_stack(trained_arms, tracking_store, tmp_path):
    committed_before = COMMITTED.read_bytes() if COMMITTED.exists() else None
    out = tmp_path / "shadow.json"
    args = ["--rows", str(ROWS), "--latency-requests", str(REQUESTS), "--simulations", str(SIMULATIONS)]
    args += ["--concurrent-rounds", "1"]
    run = run_shadow([*args, "--tracking-uri", tracking_store, "--out", str(out)], timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["replay"]["rows"] == ROWS and result["latency"]["with_shadow"]["requests"] == REQUESTS
    assert result["measured_power_at_those_sizes"]["simulations"] == SIMULATIONS
    assert result["concurrent"]["rounds"] == 1
    check_result(result)
    assert "goals:" in run.stdout
    assert (COMMITTED.read_bytes() if COMMITTED.exists() else None) == committed_before


def test_the_committed_full_run_is_consistent():
    result = json.loads(COMMITTED.read_text())["shadow"]
    check_result(result)
    assert "--quick" not in result["command"] and "--rows" not in result["command"]
