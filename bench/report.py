"""Render the benchmark's JSON into README.md, and the reliability suite's description.

    .venv/bin/python bench/report.py                      # from bench/results.json (committed)
    .venv/bin/python bench/report.py bench/results/latest.json

Only the text between ``<!-- bench:start -->``/``<!-- bench:end -->`` and between
``<!-- reliability:start -->``/``<!-- reliability:end -->`` is written (scripts/readme.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/report.py` from anywhere
from scripts import readme  # noqa: E402

README = REPO / "README.md"
RESULTS = REPO / "bench" / "results.json"

RELIABILITY = """\
`make test` runs it with the rest of the suite (`tests/reliability/`, about 3 minutes on 2 cores);
every test starts its own local stack on free loopback ports and stops it by pid.

- **Hostile input, fuzzed** (hypothesis, 1,050 generated payloads per run, reproducible; set
  `FUZZ_SCALE=10` for a longer random search): predictions and feedback sent to the gateway and
  straight to a model server with wrong shapes, unknown/missing/duplicate names, strings, booleans,
  `null`, `NaN`, `Infinity`, 400-digit integers, `1e999`, JSON nested 120,000 levels deep, bodies
  over the 1 MiB limit, broken UTF-8, wrong content types, and feedback with broken
  requests/responses/rewards. Every answer must be below 500 (a 4xx that says what is wrong),
  the reward counter must stay finite, and a good request must still succeed afterwards. The
  fuzzing found four 500s (a feedback body that is not an object, a reward too large for any
  float, a tensor without a shape or a `tftensor` inside a feedback's request - the last two
  after the reward had been counted), now fixed in `serving/` and kept as explicit examples.
- **`kill -9` of a model server under load** (the whole process group, as a container kill):
  the supervisor restarts it; every row of feedback.py's log is served and its feedback accepted
  (a 503 while the arm is down or not yet ready is retried: the gateway holds calls back until the
  restarted server's readiness probe answers, so never a 504); the verdict's per-arm counts equal
  the log's; the executor's `seldon_api_executor_server_requests_seconds_count{service="feedback",code="200"}`
  (in the gateway, which survives) equals the log exactly; and the killed arm's
  `seldon_api_model_feedback_total`, summed per series from raw samples, misses exactly the
  feedback its old process accepted after Prometheus's last scrape - asserted to lie inside the
  window computed from the log's timestamps, at most one 2 s scrape interval of traffic.
- **`kill -9` of the gateway mid-replay** (all 1,960 hold-out rows, 8 in flight, killed after 300
  feedback): the supervisor restarts it; every row is predicted and its feedback accepted. A
  feedback the kill cut off after it was sent is resent with its prediction's `Seldon-Puid`, which
  the model server counts once (it remembers the last 65,536 ids), so each model server's
  `seldon_api_model_feedback_total` equals the log exactly per arm.
- **The shadow and the request logger in trouble** (`tests/reliability/test_shadow_faults.py`,
  a paced replay through `serving/model-shadow.yaml` against a fault-free baseline): `kill -9` of
  the shadow's model server, `kill -9` of the request-logger sink, or the sink hung for 3 s,
  mid-replay: every caller request answered by the champion, none retried, no error, the callers'
  p99 within the noise of the baseline (at most 3x or +50 ms; a caller waiting for the shadow would
  wait its 5 s timeout); the failed mirrors in the shadow's own executor metrics; every logged
  event delivered or counted as dropped (a hung sink loses none).
- **The bandit's router killed** (`tests/serving/test_router_stack.py`): `kill -9` of the router
  under load reloads its state (each reward counted once, checked against the router's counters)
  instead of exploring again; 8 concurrent feedback clients give it every reward exactly once
  (`tests/serving/test_router_gateway.py`).
- **`kill -9` of Prometheus under load**: restarted, its TSDB still holds the samples from before
  the kill, and since counters are cumulative at their source every per-arm total is exact.
- **8 concurrent feedback clients** on the arms' endpoints: Prometheus counts exactly what was
  sent per arm, requests and rewards (seldon-core's metric update is a read-modify-write that
  loses increments under concurrent threads; `serving/microservice.py` makes it whole).
- **A 60 s soak** at 50 rows/s (prediction + feedback, 100 requests/s): no error, no retry, no
  late start, the books balance exactly, and the resident memory of every process of the stack
  (supervisor, gateway, Prometheus, and per model server its gunicorn master, worker, metrics
  server and metrics store) grows by less than max(16 MiB, 10%); the test prints start and end.
- **Equivalence**: feedback.py sends byte-for-byte what SeldonClient builds, and the model
  server's direct scikit-learn call answers bit-for-bit what MLflow's `pyfunc.predict` answers.
"""


def ms(value: float) -> str:
    return f"{value:.2f}"


def rate(value: float) -> str:
    return f"{value:,.0f}"


def mark(met) -> str:
    return {True: "met", False: "**not met**", None: "n/a"}[met]


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured by `make bench` (`bench/run.py`, method in [bench/README.md](bench/README.md)) on "
        f"{readme.describe(m)}; "
        f"{results['started'][:16].replace('T', ' ')} UTC, 1-minute load average "
        f"{results['load_average_before'][0]:g} before and {results['load_average_after'][0]:g} after. "
        f"Each figure is the median of {results['parameters']['rounds']} interleaved rounds; "
        "source: `bench/results.json`.",
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
    ]
    names = {
        "gateway_overhead_p50_ms": "gateway overhead, p50 (ms)",
        "gateway_throughput_ratio_c8": "gateway throughput / direct, concurrency 8",
        "ours_vs_mlflow_serve_p50_ratio": "our model server p50 / `mlflow models serve` p50",
        "ours_vs_mlserver_p50_ratio": "our model server p50 / MLServer p50",
        "replay_speedup": "feedback.py speed-up over the original loop",
        "notebook_seconds": "the notebook top to bottom (s)",
    }
    for t in results["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"| {names.get(t['target'], t['target'])} | {t['goal']} | {value} | {mark(t['met'])} |")

    a = results["a"]
    lines += [
        "",
        "**One model server, direct vs through the gateway** (1-row prediction; the gateway's "
        "predictor port, so the same single server is behind it):",
        "",
        "| | p50 ms | p99 ms | req/s, 1 at a time | req/s, 8 at a time | server CPU µs/req (8) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("direct", "direct to the model server"), ("gateway", "through the gateway")):
        r = a["runs"][name]
        lines.append(
            f"| {label} | {ms(r['seq']['p50_ms'])} | {ms(r['seq']['p99_ms'])} | {rate(r['seq']['rps'])} | "
            f"{rate(r['c8']['rps'])} | {r['c8'].get('server_cpu_us', 0):.0f} |"
        )
    lines.append(
        f"| **difference** | **{a['overhead_p50_ms']:+.2f}** | {a['overhead_p99_ms']:+.2f} | "
        f"{a['throughput_ratio_c1']:.2f}x | **{a['throughput_ratio_c8']:.2f}x** | "
        f"{a['gateway_cpu_us_per_request_c8']:+.0f} (the gateway) |"
    )

    b = results["b"]
    ours = b["runs"]["ours (seldon-core)"]["seq"]["p50_ms"]
    lines += [
        "",
        "**Model servers, same model** (each one process, its defaults; ours as in "
        "`serving/model-a-b.yaml`: 1 gunicorn worker x 4 threads):",
        "",
        "| server | p50 ms | p99 ms | req/s, 1 at a time | req/s, 8 at a time "
        "| server CPU µs/req (1) | p50 vs ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in b["runs"].items():
        s, c = runs["seq"], runs["c8"]
        lines.append(
            f"| {name} | {ms(s['p50_ms'])} | {ms(s['p99_ms'])} | {rate(s['rps'])} | {rate(c['rps'])} | "
            f"{s.get('server_cpu_us', 0):.0f} | {s['p50_ms'] / ours:.1f}x |"
        )
    for note in b.get("notes", {}).values():
        if str(note).startswith("skipped"):
            lines.append(f"\nMLServer {note}.")

    c = results["c"]
    lines += [
        "",
        f"**Replaying the {c['original']['rows']:,} hold-out rows** (prediction + feedback each):",
        "",
        "| | seconds | rows/s | feedback accepted | counted by Prometheus | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "original": "the original example's sequential SeldonClient loop",
        "feedback.py": "feedback.py (8 in flight)",
        "feedback.py, concurrency 1": "feedback.py, 1 at a time",
    }
    for key, label in labels.items():
        r = c[key]
        speed = c["original"]["seconds"] / r["seconds"]
        lines.append(
            f"| {label} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['accepted']:,} | "
            f"{r['prometheus_feedback']:,.0f} | {speed:.1f}x |"
        )

    d = results["d"]
    if "stages" in d:
        lines += [
            "",
            f"**The notebook, top to bottom** (`make run`, after install; {d['status']}, "
            f"{d['written'][:16].replace('T', ' ')} UTC):",
            "",
            "| stage | seconds |",
            "|---|---|",
        ]
        lines += [f"| {stage} | {seconds:g} |" for stage, seconds in d["stages"].items()]
        lines.append(f"| **total** | **{d['seconds']:g}** |")
    else:
        lines += ["", f"The notebook's stages: {d['status']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    readme.replace_block("bench", render(results), args.readme)
    readme.replace_block("reliability", RELIABILITY, args.readme)
    print(f"wrote the Performance and Reliability sections of {args.readme.name} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
