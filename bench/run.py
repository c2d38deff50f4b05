"""The benchmark: the serving path against what a reader would pick instead, in one run, one machine.

    make bench                      # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --rounds 1 --replay-limit 200 --skip-mlserver   # a quick look

It trains both arms into a temporary tracking store, starts its own local stack (free loopback
ports, its own state folder) and measures, side by side:

a. one prediction direct to a model server vs through the gateway (the predictor's port: the same
   single model server behind it), p50/p99 of sequential requests, requests/s at concurrency 1 and 8;
b. our model server vs ``mlflow models serve`` (same model, same venv, ``--env-manager local``)
   vs MLServer with its MLflow runtime (its own venv under .envs/mlserver, created on first use);
c. replaying the hold-out rows with predict + feedback: the original example's sequential
   SeldonClient loop vs feedback.py, with the feedback totals checked in Prometheus;
d. the notebook's stages, from runs/notebook-stages.json (written by scripts/run_notebook.py).

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
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/run.py` from anywhere

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench import load, servers  # noqa: E402
from scripts import readme  # noqa: E402

RESULTS = REPO / "bench" / "results"
NOTEBOOK_STAGES = REPO / "runs" / "notebook-stages.json"
SHARED_DATA = REPO.parent / "shared" / "data" / "wine-quality.csv"
ROW = [7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]
TARGETS = {
    "gateway_overhead_p50_ms": ("<=", 0.5),
    "gateway_throughput_ratio_c8": (">=", 0.8),
    "ours_vs_mlflow_serve_p50_ratio": ("<=", 0.5),
    "ours_vs_mlserver_p50_ratio": ("<=", 1.0),
    "replay_speedup": (">=", 5.0),
    "notebook_seconds": ("<", 90.0),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------ machine
machine = readme.machine  # one description of the machine for the README's tables


# ------------------------------------------------------------------------------------ helpers
def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def group_pids(leader: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == leader:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def measure(url: str, body, n: int, concurrency: int, pids: list[int] | None = None, **kwargs) -> dict:
    """One closed-loop run, plus the servers' CPU per request when their pids are given."""
    before = cpu_seconds(pids) if pids else 0.0
    run = load.closed_loop(url, body, n, concurrency, **kwargs).as_dict()
    if pids:
        run["server_cpu_us"] = round((cpu_seconds(pids) - before) / n * 1e6, 1)
    if run["errors"]:
        raise RuntimeError(f"{url}: {run['errors']} of {n} requests failed: {run['statuses']}")
    return run


def median_run(runs: list[dict]) -> dict:
    """Per metric, the median over rounds; the rounds themselves are kept."""
    keys = [
        k for k, v in runs[0].items() if isinstance(v, (int, float)) and k not in ("requests", "concurrency")
    ]
    summary = {k: round(statistics.median(r[k] for r in runs), 4) for k in keys}
    summary.update(requests=runs[0]["requests"], concurrency=runs[0]["concurrency"], rounds=len(runs))
    return summary


def interleaved(contenders: dict, rounds: int, shapes: list[tuple[str, int, int]]) -> dict:
    """Run every (shape x contender) ``rounds`` times, alternating the order each round.

    ``contenders``: name -> (url, body, pids); ``shapes``: (label, n, concurrency).
    Returns {contender: {label: median run}}.
    """
    raw: dict = {name: {label: [] for label, _, _ in shapes} for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for label, n, concurrency in shapes:
            for name in order:
                url, body, pids = contenders[name]
                run = measure(url, body, n, concurrency, pids)
                raw[name][label].append(run)
                log(
                    f"  round {r + 1} {label:<5} {name:<22} p50 {run['p50_ms']:.3f} ms  "
                    f"p99 {run['p99_ms']:.3f} ms  {run['rps']:.0f}/s  "
                    f"client {run['client_cpu_us']:.0f} µs/req"
                    + (f"  server {run['server_cpu_us']:.0f} µs/req" if "server_cpu_us" in run else "")
                )
    return {
        name: {label: median_run(runs) for label, runs in by_label.items()} for name, by_label in raw.items()
    }


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


def assert_loopback(addresses: set[str], what: str) -> None:
    import ipaddress

    for address in addresses:
        ip = ipaddress.ip_address(address)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_loopback:
            raise RuntimeError(f"{what} listens on {address}, not loopback")


def listening(pids: list[int]) -> set[str]:
    found = set()
    for pid in pids:
        try:
            found |= {
                c.laddr.ip
                for c in psutil.Process(pid).net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            }
        except psutil.Error:
            continue
    return found


# ------------------------------------------------------------------------------------ (a) (b)
def seldon_body() -> dict:
    from training.data import FEATURES

    return {"data": {"names": FEATURES, "ndarray": [ROW]}}


def gateway_overhead(stack, rounds: int, n_seq: int, n_conc: int) -> dict:
    state = stack.state
    model_pids = group_pids(state["processes"]["model-a"]["pid"])
    gateway_pids = group_pids(state["processes"]["gateway"]["pid"])
    body = seldon_body()
    contenders = {
        "direct": (state["urls"]["models"]["model-a"] + "/api/v1.0/predictions", body, model_pids),
        "gateway": (
            state["urls"]["predictors"]["model-a"] + "/api/v1.0/predictions",
            body,
            model_pids + gateway_pids,
        ),
    }
    log("(a) one model server, direct vs through the gateway (the predictor's port)")
    runs = interleaved(contenders, rounds, [("seq", n_seq, 1), ("c8", n_conc, 8)])
    # the ingress splits between both arms (two model servers): shown, not compared
    ingress = measure(stack.ingress_url + "/predictions", body, n_conc, 8)
    direct, gateway = runs["direct"], runs["gateway"]
    return {
        "runs": runs,
        "ingress_c8_two_arms": ingress,
        "overhead_p50_ms": round(gateway["seq"]["p50_ms"] - direct["seq"]["p50_ms"], 4),
        "overhead_p99_ms": round(gateway["seq"]["p99_ms"] - direct["seq"]["p99_ms"], 4),
        "throughput_ratio_c1": round(gateway["seq"]["rps"] / direct["seq"]["rps"], 3),
        "throughput_ratio_c8": round(gateway["c8"]["rps"] / direct["c8"]["rps"], 3),
        "gateway_cpu_us_per_request_c8": round(
            gateway["c8"]["server_cpu_us"] - direct["c8"]["server_cpu_us"], 1
        ),
    }


def model_servers(
    stack,
    model_path: str,
    workdir: Path,
    rounds: int,
    n_seq: int,
    n_conc: int,
    skip_mlserver: bool,
    started: list,
) -> dict:
    from training.data import FEATURES

    state = stack.state
    contenders = {
        "ours (seldon-core)": (
            state["urls"]["models"]["model-a"] + "/api/v1.0/predictions",
            seldon_body(),
            group_pids(state["processes"]["model-a"]["pid"]),
        ),
    }
    notes = {}
    log("(b) starting `mlflow models serve` (same model, same venv)")
    serve = servers.mlflow_serve(model_path, workdir)
    started.append(serve)
    serve.start()
    assert_loopback(serve.listening(), serve.name)
    contenders["mlflow models serve"] = (
        serve.ready_url.rsplit("/", 1)[0] + "/invocations",
        {"dataframe_split": {"columns": FEATURES, "data": [ROW]}},
        serve.pids(),
    )
    if skip_mlserver:
        notes["mlserver"] = "skipped (--skip-mlserver)"
    else:
        log("(b) preparing MLServer's own virtualenv (.envs/mlserver; first time only)")
        python, why = servers.ensure_mlserver_env(
            {
                "mlflow": metadata.version("mlflow"),
                "scikit-learn": metadata.version("scikit-learn"),
                "numpy": metadata.version("numpy"),
            },
            workdir / "mlserver-install.log",
        )
        if python is None:
            notes["mlserver"] = f"skipped: MLServer could not be installed: {why}"
            log(notes["mlserver"])
        else:
            mls = servers.mlserver(python, model_path, workdir)
            started.append(mls)
            mls.start()
            assert_loopback(mls.listening(), mls.name)
            v2 = {
                "parameters": {"content_type": "pd"},
                "inputs": [
                    {"name": f, "datatype": "FP64", "shape": [1], "data": [v]}
                    for f, v in zip(FEATURES, ROW, strict=True)
                ],
            }
            contenders["MLServer (mlflow runtime)"] = (
                mls.ready_url.rsplit("/", 1)[0] + "/infer",
                v2,
                mls.pids(),
            )
            out = subprocess_version(python, "mlserver")
            notes["mlserver_version"] = out
    runs = interleaved(contenders, rounds, [("seq", n_seq, 1), ("c8", n_conc, 8)])
    for server in started:
        server.stop()
    ours = runs["ours (seldon-core)"]["seq"]["p50_ms"]
    result = {
        "runs": runs,
        "notes": notes,
        "ours_vs_mlflow_serve_p50_ratio": round(ours / runs["mlflow models serve"]["seq"]["p50_ms"], 3),
    }
    if "MLServer (mlflow runtime)" in runs:
        result["ours_vs_mlserver_p50_ratio"] = round(
            ours / runs["MLServer (mlflow runtime)"]["seq"]["p50_ms"], 3
        )
    return result


def subprocess_version(python: Path, package: str) -> str:
    import subprocess

    out = subprocess.run(
        [str(python), "-c", f"from importlib.metadata import version; print(version('{package}'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


# ------------------------------------------------------------------------------------ (c)
def feedback_total(prometheus_url: str) -> float:
    """Every model server's seldon_api_model_feedback_total, after a scrape that started now."""
    from experiment.prometheus_data import wait_for_scrape
    from serving import prometheus

    wait_for_scrape(prometheus_url, time.time())
    result = prometheus.query(prometheus_url, "sum(seldon_api_model_feedback_total)")
    return float(result[0]["value"][1]) if result else 0.0


def original_loop(stack, rows) -> dict:
    """The original example's replay, call for call: per row ``sc.predict`` then ``sc.feedback``,
    one after the other, with SeldonClient through the ingress (its feedback goes to the ingress
    too). Two changes that do not touch the call pattern: ``client_return_type="proto"`` (with the
    default "dict", ``feedback`` of a prediction raises TypeError), and the bounded reward of
    feedback.py (the original's 1/err² is unbounded and 500 on an exact guess)."""
    from seldon_core.seldon_client import SeldonClient

    import feedback
    from training.data import FEATURES, TARGET

    sc = SeldonClient(
        gateway="ambassador",
        namespace=stack.namespace,
        gateway_endpoint=stack.gateway_endpoint,
        deployment_name=stack.deployment,
        client_return_type="proto",
    )
    accepted, failed = 0, 0
    start = time.perf_counter()
    for _, row in rows.iterrows():
        X = row[FEATURES].to_numpy(dtype=float).reshape(1, -1)
        r = sc.predict(deployment_name=stack.deployment, data=X, names=FEATURES)
        y_pred = r.response.data.tensor.values[0]
        sent = sc.feedback(
            deployment_name=stack.deployment,
            prediction_request=r.request,
            prediction_response=r.response,
            reward=feedback.reward(row[TARGET], y_pred),
        )
        accepted += bool(r.success and sent.success)
        failed += not (r.success and sent.success)
    seconds = time.perf_counter() - start
    return {
        "rows": len(rows),
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(rows) / seconds, 1),
        "accepted": accepted,
        "failed": failed,
    }


def replay(stack, workdir: Path, limit: int | None) -> dict:
    import feedback
    from serving.endpoints import Endpoints

    rows = feedback.holdout_rows(limit=limit)
    prom = stack.prometheus_url
    endpoints = Endpoints.local(stack.state_dir)
    log(f"(c) replaying {len(rows)} hold-out rows: the original sequential SeldonClient loop")
    before = feedback_total(prom)
    original = original_loop(stack, rows)
    after_original = feedback_total(prom)
    original["prometheus_feedback"] = after_original - before
    log(f"    {original['rows_per_s']} rows/s; feedback.py, concurrency 8")
    result = {"original": original}
    previous = after_original
    for label, concurrency in (("feedback.py", 8), ("feedback.py, concurrency 1", 1)):
        run = feedback.replay(
            endpoints,
            limit=limit,
            concurrency=concurrency,
            log_path=workdir / f"replay-{concurrency}.csv",
            progress=False,
        )
        total = feedback_total(prom)
        accepted = int((run.log["feedback_status"] == 200).sum())
        result[label] = {
            "rows": run.sent,
            "seconds": round(run.seconds, 3),
            "rows_per_s": round(run.sent / run.seconds, 1),
            "accepted": accepted,
            "failed": len(run.failures),
            "prometheus_feedback": total - previous,
        }
        previous = total
        log(f"    {label}: {result[label]['rows_per_s']} rows/s")
    fast = result["feedback.py"]
    result["speedup"] = round(original["seconds"] / fast["seconds"], 2)
    result["speedup_concurrency_1"] = round(
        original["seconds"] / result["feedback.py, concurrency 1"]["seconds"], 2
    )
    result["totals_identical"] = original["accepted"] == fast["accepted"] == len(rows) and original[
        "prometheus_feedback"
    ] == fast["prometheus_feedback"] == len(rows)
    return result


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


# ------------------------------------------------------------------------------------ report
def verdicts(results: dict) -> list[dict]:
    values = {
        "gateway_overhead_p50_ms": results["a"]["overhead_p50_ms"],
        "gateway_throughput_ratio_c8": results["a"]["throughput_ratio_c8"],
        "ours_vs_mlflow_serve_p50_ratio": results["b"].get("ours_vs_mlflow_serve_p50_ratio"),
        "ours_vs_mlserver_p50_ratio": results["b"].get("ours_vs_mlserver_p50_ratio"),
        "replay_speedup": results["c"]["speedup"] if results["c"].get("totals_identical") else None,
        "notebook_seconds": results["d"].get("seconds"),
    }
    out = []
    for name, (op, target) in TARGETS.items():
        value = values[name]
        met = (
            None if value is None else {"<=": value <= target, ">=": value >= target, "<": value < target}[op]
        )
        out.append({"target": name, "value": value, "goal": f"{op} {target:g}", "met": met})
    return out


def print_summary(results: dict) -> None:
    a, b, c = results["a"], results["b"], results["c"]
    print("\n=== results (median of rounds) ===")
    for name, runs in a["runs"].items():
        print(
            f"(a) {name:<8} seq p50 {runs['seq']['p50_ms']:.3f} ms p99 {runs['seq']['p99_ms']:.3f} ms "
            f"{runs['seq']['rps']:.0f}/s | c8 {runs['c8']['rps']:.0f}/s"
        )
    print(
        f"    gateway overhead p50 +{a['overhead_p50_ms']:.3f} ms, "
        f"throughput c1 {a['throughput_ratio_c1']:.2f}x c8 {a['throughput_ratio_c8']:.2f}x of direct"
    )
    for name, runs in b["runs"].items():
        print(
            f"(b) {name:<26} seq p50 {runs['seq']['p50_ms']:.3f} ms p99 {runs['seq']['p99_ms']:.3f} ms "
            f"| c8 {runs['c8']['rps']:.0f}/s"
        )
    for label in ("original", "feedback.py", "feedback.py, concurrency 1"):
        r = c[label]
        print(
            f"(c) {label:<28} {r['rows']} rows in {r['seconds']:.1f} s ({r['rows_per_s']}/s), "
            f"accepted {r['accepted']}, Prometheus counted {r['prometheus_feedback']:g}"
        )
    print(f"    speedup {c['speedup']}x, totals identical: {c['totals_identical']}")
    print(f"(d) notebook: {results['d'].get('seconds', results['d']['status'])}")
    print("\n=== targets ===")
    for v in results["targets"]:
        mark = {True: "met", False: "NOT met", None: "n/a"}[v["met"]]
        print(f"  {v['target']:<32} {v['value']!s:>8}  goal {v['goal']:<8} {mark}")


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
