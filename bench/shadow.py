"""Shadow benchmark: what a shadow costs the caller, and how many requests the paired comparison saves.

    .venv/bin/python -m bench.shadow                   # trains both arms into a temporary store
    .venv/bin/python -m bench.shadow --quick --tracking-uri sqlite:///... --no-write   # a quick look

It starts its own local stack from serving/model-shadow.yaml (free loopback ports, its own state
folder; stopped by pid at the end) and:

1. **Latency.** Sequential 1-row predictions through three local stacks, interleaved request by
   request in a shuffled order each round: this one (model-b serving, model-a as a logged
   shadow), one serving the same manifest without the shadow (model-b logged), one without the
   shadow or logging. p50 and p99 of each, and what the shadow adds (goal: <= 0.2 ms at p50).
   Each is a stack as `python -m serving.local up` starts it: its gateway and main model server in
   the supervisor's session; the shadow's model server, the sink and the gateway's logger process
   niced, each in a session of its own (serving.request_logger.offload.yield_cpu). Linux's
   autogroup scheduler shares the CPU between sessions first and orders by niceness only within
   one, so a gateway started elsewhere is not comparable: earlier runs compared this stack's
   gateway with gateways started by this script (in its session) and counted the difference of
   sessions (0 to +2 ms at p50 in runs here, growing with the load) as the shadow's cost.
   The mirror is sent after the caller's answer, so its cost shows as CPU the next request shares.
   Then 4 callers in flight through the stacks with and without the shadow (runs interleaved,
   median of rounds): there the mirror's work - the gateway's, the shadow model's, their events -
   competes with the callers' requests for the 2 cores, which the sequential figure cannot show;
   mirrors the shadow cannot take (more than ``shadow_max_in_flight`` waiting) are skipped and
   counted, as Istio drops them.
2. **Requests for 80% power.** The hold-out rows are replayed through the stack's ingress as
   feedback.py does (each with a ``Seldon-Puid``); the replay log is joined with the shadow's
   logged answers by that id (experiment.paired.from_replay), and the rewards of both models on the
   same rows give the callers' requests each design needs to detect the observed difference with
   80% power at alpha 0.05: the paired shadow comparison (each caller request answered by both;
   the mirror costs the caller nothing) against the 50/50 A/B test (each caller request answered
   by one arm) - exact noncentral-t sizes (experiment.paired.required_requests; goal: >= 5x fewer).
   Then, side by side, each design's power is measured by resampling the replayed rows at its own
   size: the paired t-test on n rows, Welch's test on a 50/50 split of the A/B size.

Results: the ``shadow`` key of bench/results.json (other keys untouched), or ``--out FILE``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/shadow.py` from anywhere

SHADOW = REPO / "serving" / "model-shadow.yaml"
RESULTS = REPO / "bench" / "results.json"
SHARED_DATA = REPO.parent / "shared" / "data" / "wine-quality.csv"  # offline machines and CI
MAIN, CHALLENGER = "model-b", "model-a"  # serving/model-shadow.yaml: the champion, its shadow
GOALS = {"shadow_added_p50_ms": ("<=", 0.2), "ab_over_paired_requests": (">=", 5.0)}
FULL = {"rows": None, "latency_requests": 2000, "simulations": 2000, "concurrent_rounds": 5}
QUICK = {"rows": 400, "latency_requests": 300, "simulations": 500, "concurrent_rounds": 2}
CONCURRENT = ("c4", 400, 4)  # label, requests per run, callers in flight
WARMUP = 100


def variant(stack, folder: Path, name: str, shadow: bool, logging: bool) -> Path:
    """The stack's working copy (its logger URLs already on the stack's sink) without the shadow
    and/or without loggers."""
    manifest = copy.deepcopy(yaml.safe_load(Path(stack.manifest_path).read_text()))
    predictors = manifest["spec"]["predictors"]
    if not shadow:
        predictors[:] = [p for p in predictors if not p.get("shadow")]
    if not logging:
        for p in predictors:
            p["graph"].pop("logger", None)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def one_row() -> dict:
    """The prediction every latency request sends: one wine, as SeldonClient sends it."""
    from serving.client import prediction_request
    from training.data import FEATURES

    return prediction_request(
        np.array([[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]), FEATURES
    )


def latency(ingresses: dict[str, str], n: int, pids: dict[str, list[int]], seed: int) -> dict:
    """Sequential 1-row predictions through each ingress, interleaved in a shuffled order each round
    (no stack always follows another's mirror); p50/p99 in ms of each, and the CPU each group of
    ``pids`` spent per round (one request through every ingress): for a process of one stack, its
    CPU per request that stack served."""
    from bench.load import percentile
    from bench.run import cpu_seconds

    body = one_row()
    times: dict[str, list[float]] = {name: [] for name in ingresses}
    order = list(ingresses)
    shuffle = random.Random(seed).shuffle
    cpu_before = {name: cpu_seconds(group) for name, group in pids.items()}
    with requests.Session() as session:
        for i in range(n + WARMUP):
            shuffle(order)
            for name in order:
                url = ingresses[name]
                start = time.perf_counter()
                session.post(f"{url}/predictions", json=body, timeout=10).raise_for_status()
                if i >= WARMUP:
                    times[name].append((time.perf_counter() - start) * 1000)
    rounds = n + WARMUP
    # the shadow's p50 cost in each fifth of the run: how much it moves with the machine's load
    m = n // 5
    fifths = [
        percentile(times["with_shadow"][k * m : (k + 1) * m], 50)
        - percentile(times["without_shadow"][k * m : (k + 1) * m], 50)
        for k in range(5)
    ]
    return {
        name: {"p50_ms": percentile(t, 50), "p99_ms": percentile(t, 99), "requests": len(t)}
        for name, t in times.items()
    } | {
        "shadow_added_p50_ms_by_fifth": fifths,
        "cpu_us_per_round": {
            name: (cpu_seconds(group) - cpu_before[name]) / rounds * 1e6 for name, group in pids.items()
        },
    }


def measured_power(
    main: np.ndarray, shadow: np.ndarray, paired_n: int, ab_n: int, simulations: int, seed: int
) -> dict:
    """Each design's power at its own size, by resampling the replayed rows (with replacement):
    the paired t-test on ``paired_n`` rows both models answered; Welch's test on ``ab_n`` callers'
    rows split 50/50 by a coin, each row earning only its arm's reward."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    rows = len(main)
    paired_hits = ab_hits = 0
    for _ in range(simulations):
        i = rng.integers(0, rows, paired_n)
        paired_hits += stats.ttest_rel(shadow[i], main[i]).pvalue < 0.05
        j = rng.integers(0, rows, ab_n)
        arm = rng.integers(0, 2, ab_n).astype(bool)
        ab_hits += stats.ttest_ind(shadow[j][arm], main[j][~arm], equal_var=False).pvalue < 0.05
    return {"paired": paired_hits / simulations, "ab": ab_hits / simulations, "simulations": simulations}


def shadow_status(stack, before: dict | None = None) -> dict:
    """The stack's mirror counts (``/admin/status``); with ``before``, those since then."""
    now = requests.get(f"http://{stack.gateway_endpoint}/admin/status", timeout=5).json()["shadow"]
    return now if before is None else now | {k: now[k] - before[k] for k in ("mirrored", "skipped")}


def wait_for_events(folder: Path, puids: set[str], timeout: float = 60) -> None:
    from serving.request_logger import read_events

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answered = {
            e["requestid"]
            for e in read_events(folder)
            if e["endpoint"] == CHALLENGER and e["kind"] == "response"
        }
        if puids <= answered:
            return
        time.sleep(0.25)


def write_key(results: dict, path: Path = RESULTS, key: str = "shadow") -> None:
    """Set ``key`` of bench/results.json, leaving every other key as it was."""
    document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    document[key] = results
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")


def _p(run: dict) -> str:
    return f"{run['p50_ms']:.3f}/{run['p99_ms']:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="hold-out rows to replay (default: all)")
    parser.add_argument("--latency-requests", type=int, default=None, help="per gateway (2000)")
    parser.add_argument("--simulations", type=int, default=None, help="resamples per design (2000)")
    parser.add_argument(
        "--concurrent-rounds", type=int, default=None, help="runs of 4 concurrent callers per gateway (5)"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} where not given, instead of {FULL}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="a JSON file instead of bench/results.json")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="an existing store with @a and @b (default: train into a temporary one)",
    )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    import feedback
    from bench.measure import interleaved
    from bench.run import group_pids
    from experiment import paired
    from scripts.readme import machine
    from serving.endpoints import Endpoints
    from serving.local import LocalStack

    # a SIGTERM (a test's timeout) unwinds through `finally`: the stacks go down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()  # the machine is shared: how busy it was frames the latency figures
    if not os.environ.get("WINE_QUALITY_CSV") and SHARED_DATA.is_file():
        os.environ["WINE_QUALITY_CSV"] = str(SHARED_DATA)
    folder = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    else:
        from training.arms import train_arms

        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        train_arms()
    stack = LocalStack.up(SHADOW, port=0, state_dir=folder / "stack", timeout=300)
    others: list[LocalStack] = []  # the stacks without the shadow (and without logging)
    try:
        # 1. the requests each design needs, from a replay of the hold-out rows
        log_path = folder / "replay.csv"
        replay = feedback.replay(
            Endpoints.local(stack.state_dir), limit=args.rows, log_path=log_path, progress=False
        )
        events = stack.state_dir / "request-logs"
        wait_for_events(events, set(replay.log["puid"].dropna()))
        pairs = paired.from_replay(log_path, events, shadow=CHALLENGER)
        test = paired.paired_test(pairs)
        sizes = paired.required_requests(pairs)
        frame = pairs.frame
        power = measured_power(
            frame["reward_main"].to_numpy(),
            frame["reward_shadow"].to_numpy(),
            int(np.ceil(sizes.paired)),
            2 * int(np.ceil(sizes.ab_per_arm)),
            args.simulations,
            args.seed,
        )
        replay_mirrors = shadow_status(stack)
        # 2. the caller's latency with and without the shadow: a stack of each, started alike
        stacks = {"with_shadow": stack}
        for name, shadow, logging in (
            ("without_shadow", False, True),
            ("without_shadow_or_logging", False, False),
        ):
            others.append(
                LocalStack.up(
                    variant(stack, folder, name, shadow, logging),
                    port=0,
                    state_dir=folder / f"stack-{name}",
                    timeout=300,
                )
            )
            stacks[name] = others[-1]
        ingresses = {name: s.ingress_url for name, s in stacks.items()}
        processes = {name: s.status()["processes"] for name, s in stacks.items()}
        gateway_pids = {name: p["gateway"]["pid"] for name, p in processes.items()}
        pids = {
            # each gateway process alone: the CPU the caller's path spends per request it served
            **{f"gateway_{name}": [pid] for name, pid in gateway_pids.items()},
            **{f"main_model_server_{name}": group_pids(p[MAIN]["pid"]) for name, p in processes.items()},
            "shadow_model_server": group_pids(processes["with_shadow"][CHALLENGER]["pid"]),
            "logger_processes_with_shadow": [
                c.pid for c in psutil.Process(gateway_pids["with_shadow"]).children()
            ],
            "logger_processes_without_shadow": [
                c.pid for c in psutil.Process(gateway_pids["without_shadow"]).children()
            ],
            "sink_with_shadow": group_pids(processes["with_shadow"]["request-logger"]["pid"]),
            "sink_without_shadow": group_pids(processes["without_shadow"]["request-logger"]["pid"]),
        }
        timing = latency(ingresses, args.latency_requests, pids, args.seed)
        after_latency = shadow_status(stack)
        mirrored = {
            "replay": replay_mirrors,
            "latency": after_latency
            | {k: after_latency[k] - replay_mirrors[k] for k in ("mirrored", "skipped")},
        }
        # 3. with 4 callers in flight the mirror's work (the gateway's, the shadow's, its logging)
        # shares the cores with the callers' requests instead of running between them
        concurrent = interleaved(
            {
                name: (f"{ingresses[name]}/predictions", one_row(), pids[f"gateway_{name}"])
                for name in ("with_shadow", "without_shadow")
            },
            args.concurrent_rounds,
            [CONCURRENT],
        )
        mirrored["concurrent"] = shadow_status(stack, after_latency)
    finally:
        for other in others:
            other.down()
        stack.down()
    cpu = timing["cpu_us_per_round"]
    added_p50 = timing["with_shadow"]["p50_ms"] - timing["without_shadow"]["p50_ms"]
    added_p99 = timing["with_shadow"]["p99_ms"] - timing["without_shadow"]["p99_ms"]
    result = {
        "started": started,
        "machine": machine(),
        "command": "python -m bench.shadow " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "latency": timing,
        "concurrent": {
            "callers": CONCURRENT[2],
            "requests_per_run": CONCURRENT[1],
            "rounds": args.concurrent_rounds,
            **{name: runs[CONCURRENT[0]] for name, runs in concurrent.items()},
            "shadow_added_p50_ms": concurrent["with_shadow"][CONCURRENT[0]]["p50_ms"]
            - concurrent["without_shadow"][CONCURRENT[0]]["p50_ms"],
            "throughput_ratio": concurrent["with_shadow"][CONCURRENT[0]]["rps"]
            / concurrent["without_shadow"][CONCURRENT[0]]["rps"],
        },
        "shadow_added_p50_ms": added_p50,
        "shadow_added_p99_ms": added_p99,
        "logging_added_p50_ms": timing["without_shadow"]["p50_ms"]
        - timing["without_shadow_or_logging"]["p50_ms"],
        "mirrors": mirrored,
        "replay": {
            "rows": len(replay.log),
            "errors": int((replay.log["error"].fillna("") != "").sum()),
            "paired_rows": len(pairs),
            "unpaired_main_only": pairs.main_only,
        },
        "paired_test": test.as_dict(),
        "required_requests": {
            "effect": sizes.effect,
            "correlation": sizes.correlation,
            "sd_main": sizes.sd_main,
            "sd_shadow": sizes.sd_shadow,
            "sd_difference": sizes.sd_difference,
            "paired": sizes.paired,
            "ab_total": sizes.ab_total,
            "ab_per_arm": sizes.ab_per_arm,
        },
        "ab_over_paired_requests": sizes.ratio,
        "measured_power_at_those_sizes": power,
    }
    result["goals"] = {
        name: {
            "goal": f"{op} {bound}",
            "met": bool(result[name] <= bound if op == "<=" else result[name] >= bound),
        }
        for name, (op, bound) in GOALS.items()
    }
    shutil.rmtree(folder, ignore_errors=True)
    print(
        f"caller p50/p99: with shadow {_p(timing['with_shadow'])} ms, "
        f"without {_p(timing['without_shadow'])} ms "
        f"(shadow adds {added_p50:+.3f} ms at p50, {added_p99:+.3f} ms at p99; by fifth of the run: "
        f"{', '.join(f'{x:+.2f}' for x in timing['shadow_added_p50_ms_by_fifth'])} ms at p50; "
        f"without logging either: {timing['without_shadow_or_logging']['p50_ms']:.3f} ms p50)\n"
        f"{CONCURRENT[2]} callers in flight, median of {args.concurrent_rounds} runs each: p50 with shadow "
        f"{result['concurrent']['with_shadow']['p50_ms']:.3f} ms, without "
        f"{result['concurrent']['without_shadow']['p50_ms']:.3f} ms; requests/s with/without "
        f"{result['concurrent']['throughput_ratio']:.2f}\n"
        f"CPU µs per round (a gateway: per request it served): "
        f"{json.dumps({k: round(v) for k, v in cpu.items()})}\n"
        f"{test.summary()}\n{sizes.summary()}\n"
        f"measured power at those sizes ({power['simulations']} resamples of the replayed rows): "
        f"paired {power['paired']:.3f} with {int(np.ceil(sizes.paired))} requests, "
        f"A/B {power['ab']:.3f} with {2 * int(np.ceil(sizes.ab_per_arm))}\n"
        f"goals: {json.dumps(result['goals'])}"
    )
    if not args.no_write:
        if args.out:
            args.out.write_text(json.dumps(result, indent=2))
        else:
            write_key(result)
        print(f"wrote {args.out or RESULTS.relative_to(REPO)}" + ("" if args.out else "['shadow']"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
