"""The benchmark's command line: the serving path against what a reader would pick instead, in one run.

    make bench                      # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --rounds 1 --replay-limit 200 --skip-mlserver   # a quick look

It trains both arms into a temporary tracking store, starts its own local stack (free loopback
ports, its own state folder) and measures, side by side:

a. one prediction direct to a model server vs through the gateway,
b. our model server vs ``mlflow models serve`` vs MLServer (a and b: bench/serving_path.py),
c. replaying the hold-out rows: the original sequential SeldonClient loop vs feedback.py
   (bench/replay_speed.py),
d. the notebook's stages, from runs/notebook-stages.json (written by scripts/run_notebook.py, read here).

How each is measured: bench/measure.py (bench/load.py is the client); the goals and the printed
summary: bench/targets.py; this module: the set-up, the command line, the results file.

Every measurement is repeated ``--rounds`` times with the contenders interleaved, and the median
round is reported, so a noisy neighbour hurts both sides alike. Results go to
bench/results/latest.json (git-ignored); bench/report.py renders them into README.md.
Every server the benchmark starts binds 127.0.0.1 and is stopped by pid at the end, also on
Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/run.py` from anywhere

import numpy as np  # noqa: E402

from bench import servers  # noqa: E402
from bench.measure import (  # noqa: E402, F401  (bench/shadow.py imports cpu_seconds, group_pids from here)
    assert_loopback,
    cpu_seconds,
    group_pids,
    listening,
    log,
)
from bench.replay_speed import replay  # noqa: E402
from bench.serving_path import gateway_overhead, model_servers  # noqa: E402
from bench.targets import print_summary, verdicts  # noqa: E402
from scripts import readme  # noqa: E402

RESULTS = REPO / "bench" / "results"
NOTEBOOK_STAGES = REPO / "runs" / "notebook-stages.json"
SHARED_DATA = REPO.parent / "shared" / "data" / "wine-quality.csv"
machine = readme.machine  # one description of the machine for the README's tables


# ------------------------------------------------------------------------------------ setup
def prepare_store(workdir: Path, tracking_uri: str | None = None) -> dict:
    """A private tracking store with both arms trained by `mlflow run` (what the notebook does).

    With ``tracking_uri``, the arms already registered there (aliases a and b) instead: the tests'
    session store, so the smoke test does not train them a second time.
    """
    from training.arms import ARMS, train_arms
    from training.tracking import EXPERIMENT, MODEL_NAME, registered_version

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        return {alias: registered_version(f"models:/{MODEL_NAME}@{alias}") for alias in ARMS}
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from mlflow.tracking import MlflowClient

    # artifacts beside the private store, not in the repo's mlartifacts/
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(workdir / "mlartifacts").as_uri())
    return train_arms()


def stack_manifest(workdir: Path) -> Path:
    manifest = workdir / "model-a-b.yaml"
    shutil.copy(REPO / "serving" / "model-a-b.yaml", manifest)
    return manifest


# ------------------------------------------------------------------------------------ (d)
def notebook_stages(path: Path = NOTEBOOK_STAGES) -> dict:
    if not path.exists():
        return {
            "status": f"pending: {path} not found - `make run` "
            "(scripts/run_notebook.py) writes it; run `make bench` after it"
        }
    stages = json.loads(path.read_text())
    if isinstance(stages, dict) and "stages" in stages:
        stages = stages["stages"]
    total = stages.pop("total", None)  # scripts/run_notebook.py writes the sum as "total"
    total = round(float(total) if total is not None else sum(float(v) for v in stages.values()), 1)
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return {
        "status": "measured by scripts/run_notebook.py",
        "written": written,
        "stages": stages,
        "seconds": total,
    }


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the serving path against the alternatives (bench/README.md)."
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="repetitions of each measurement, interleaved (median reported)"
    )
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per run")
    parser.add_argument(
        "--concurrent-requests", type=int, default=3000, help="requests per run at concurrency 8"
    )
    parser.add_argument(
        "--replay-limit", type=int, default=None, help="replay only this many hold-out rows (default all)"
    )
    parser.add_argument("--skip-mlserver", action="store_true", help="do not install or run MLServer")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument(
        "--tracking-uri",
        help="use the arms (aliases a, b) already registered in this MLflow store instead of training them",
    )
    parser.add_argument(
        "--notebook-stages",
        type=Path,
        default=NOTEBOOK_STAGES,
        help="part (d)'s stage times (default runs/notebook-stages.json, written by `make run`)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, tracking store)"
    )
    args = parser.parse_args(argv)

    if not os.environ.get("WINE_QUALITY_CSV") and SHARED_DATA.is_file():
        os.environ["WINE_QUALITY_CSV"] = str(SHARED_DATA)  # offline machines and CI, as in tests/conftest.py
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-seldon-bench-"))
    started: list[servers.Server] = []
    stack = None
    results: dict = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    t0 = time.perf_counter()
    try:
        if args.tracking_uri:
            log(f"using the arms registered in {args.tracking_uri}")
        else:
            log(f"training both arms into a private tracking store ({workdir})")
        versions = prepare_store(workdir, args.tracking_uri)
        from mlflow import artifacts

        from serving.local import LocalStack

        model_path = artifacts.download_artifacts(
            f"models:/{versions['a'].name}/{versions['a'].version}", dst_path=str(workdir / "model-a")
        )
        log("starting the local stack on free loopback ports")
        stack = LocalStack.up(stack_manifest(workdir), port=0, state_dir=workdir / "stack", timeout=240)
        assert_loopback(
            listening(sum((group_pids(p["pid"]) for p in stack.state["processes"].values()), [])), "the stack"
        )
        results["parameters"] = {
            "rounds": args.rounds,
            "sequential_requests": args.requests,
            "concurrent_requests": args.concurrent_requests,
            "replay_limit": args.replay_limit,
        }
        results["a"] = gateway_overhead(stack, args.rounds, args.requests, args.concurrent_requests)
        results["b"] = model_servers(
            stack,
            model_path,
            workdir,
            args.rounds,
            args.requests,
            args.concurrent_requests,
            args.skip_mlserver,
            started,
        )
        results["c"] = replay(stack, workdir, args.replay_limit)
        results["d"] = notebook_stages(args.notebook_stages)
        results["targets"] = verdicts(results)
    except KeyboardInterrupt:
        log("interrupted: stopping everything the benchmark started")
        return 130
    finally:
        for server in started:
            server.stop()
        if stack is not None:
            stack.down()
        leftovers = [pid for s in started for pid in s.pids()]
        if leftovers:
            log(f"warning: processes still running after stop: {leftovers}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=_jsonable))
    print_summary(results)
    print(
        f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} "
        f"in {results['seconds']:.0f} s; render it into README.md with `.venv/bin/python bench/report.py`"
    )
    return 0


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(type(value))


if __name__ == "__main__":
    sys.exit(main())
