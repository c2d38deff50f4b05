"""`bench/run.py` end to end at tiny sizes, MLServer skipped: every part runs and produces numbers.

The benchmark is a script nobody runs in the edit-test loop, so a refactor that breaks one of its
imports (issue 10: part (c) crashed on a moved helper) would otherwise surface only in `make bench`.
It serves the session's trained arms (``--tracking-uri``) on a stack of its own, on free ports;
results go to a temporary file, never to the committed bench/results.json.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from tests.bench.script import run_script

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "bench" / "results.json"
ROWS = 24  # hold-out rows replayed by each contender of part (c)

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def run_bench(args: list[str], timeout: float = 420) -> subprocess.CompletedProcess:
    return run_script("bench.run", args, timeout)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_part_runs_and_produces_numbers(tmp_path, tracking_store, trained_arms):
    committed_before = COMMITTED.read_bytes() if COMMITTED.exists() else None
    stages = tmp_path / "notebook-stages.json"
    # the shape scripts/run_notebook.py writes
    stages.write_text(json.dumps({"written": "now", "stages": {"Train": 2.5, "Serve": 1.5, "total": 4.0}}))
    out = tmp_path / "results.json"
    proc = run_bench(
        [
            "--rounds", "1",
            "--requests", "20",
            "--concurrent-requests", "40",
            "--replay-limit", str(ROWS),
            "--skip-mlserver",
            "--notebook-stages", str(stages),
            "--out", str(out),
            "--tracking-uri", tracking_store,
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = json.loads(out.read_text())

    # (a) direct vs through the gateway
    a = results["a"]
    for contender in ("direct", "gateway"):
        for shape in ("seq", "c8"):
            run = a["runs"][contender][shape]
            assert run["errors"] == 0
            assert positive(run["p50_ms"]) and positive(run["rps"]), run
    assert isinstance(a["overhead_p50_ms"], float) and positive(a["throughput_ratio_c8"])
    assert positive(a["ingress_c8_two_arms"]["rps"])

    # (b) our model server vs `mlflow models serve`; MLServer skipped as asked
    b = results["b"]
    assert set(b["runs"]) == {"ours (seldon-core)", "mlflow models serve"}
    assert positive(b["ours_vs_mlflow_serve_p50_ratio"])
    assert "skipped" in b["notes"]["mlserver"]

    # (c) the replay: every row served, its feedback accepted and counted once in Prometheus
    c = results["c"]
    for label in ("original", "feedback.py", "feedback.py, concurrency 1"):
        replay = c[label]
        assert replay["rows"] == ROWS and replay["accepted"] == ROWS and replay["failed"] == 0, (
            label,
            replay,
        )
        assert replay["prometheus_feedback"] == ROWS, (label, replay)
        assert positive(replay["rows_per_s"])
    assert c["totals_identical"] is True and positive(c["speedup"])

    # (d) the notebook's stages, read from the file given
    assert results["d"]["stages"] == {"Train": 2.5, "Serve": 1.5} and results["d"]["seconds"] == 4.0

    targets = {t["target"]: t for t in results["targets"]}
    assert targets["ours_vs_mlserver_p50_ratio"]["value"] is None  # skipped, so no verdict
    assert all(t["value"] is not None for name, t in targets.items() if name != "ours_vs_mlserver_p50_ratio")
    assert "=== targets ===" in proc.stdout

    assert (COMMITTED.read_bytes() if COMMITTED.exists() else None) == committed_before
