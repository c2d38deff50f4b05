"""A/B test against bandit on the same hold-out rows in the same order; one figure.

    .venv/bin/python -m bench.bandit                  # trains both arms into a temporary store
    .venv/bin/python -m bench.bandit --quick --out /tmp/bandit.json --figure /tmp/bandit.png  # CI's size

It starts its own local stack from serving/model-bandit.yaml (free loopback ports, its own state
folder; stopped by pid at the end) and (1-4 are experiment/bandits.py, which bandits.ipynb runs too):

1. asks each arm's model server for every hold-out row, so each row's reward is known for both
   arms (``feedback.reward``): the counterfactual that regret needs;
2. replays the rows through the bandit's ingress, in the hold-out order, one request and one
   feedback (the response as it came, with its ``meta.routing``) per row: the router learns live;
3. gives the A/B test the same rows in the same order, 50/50 by a seeded coin, rewards from (1);
4. repeats both over ``--repeats`` shuffles of the rows, in process (the same router classes,
   no HTTP) to measure the bias of each arm's mean-reward estimate, which one replay cannot show:
   an adaptive allocation stops sampling an arm after a few unlucky rewards, so its mean is
   biased low; the A/B test's is not. The same runs give each policy's distribution, not just
   its mean: the share of runs stuck on the worse arm (less than half of the second half to the
   better one) and the mean regret of the worst tenth of runs, for the router's Thompson
   posterior (student-t) and the two it replaced or stands beside (plug-in gaussian, beta);
   ``seeds`` repeats the Thompson posteriors on the replay's own order over ``--repeats`` router
   seeds, since the live run is one such draw;
5. measures what the router adds per request: sequential predictions through the bandit's
   ingress (gateway -> router -> arm) against a second gateway serving serving/model-a-b.yaml in
   front of the same two model servers (gateway -> arm), interleaved, p50 of each; and, in the
   same loop, the floor of the router's hop: a bare /health/ping round trip to the router's
   server, and its /route called directly.

Results: bench/results-bandit.json (committed: the README's "Bandit or A/B test?" block is
rendered from it by ``readme_block``, ``python -m scripts.readme``) and images/bandit.png.
``--quick`` is the size tests/bench/test_bandit.py runs in CI (the first 400 hold-out rows, 20
shuffles, 100 latency requests). Goals (issue 15): Thompson sampling sends >= 80% of the second
half of the replay to the better arm; the router adds <= 0.3 ms at p50.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BANDIT = REPO / "serving" / "model-bandit.yaml"
AB = REPO / "serving" / "model-a-b.yaml"
RESULTS = REPO / "bench" / "results-bandit.json"
FIGURE = REPO / "images" / "bandit.png"
SHARED_DATA = REPO.parent / "shared" / "data" / "wine-quality.csv"  # offline machines and CI
GOALS = {"thompson_second_half_share": (">=", 0.8), "router_added_p50_ms": ("<=", 0.3)}
FULL = {"rows": None, "repeats": 200, "latency_requests": 1000}
QUICK = {"rows": 400, "repeats": 20, "latency_requests": 100}  # CI: about a minute on 2 busy cores


def latency(bandit_ingress: str, plain_ingress: str, router: str, n: int) -> dict:
    """p50 of sequential 1-row calls, interleaved, after a warm-up: predictions through each ingress,
    and the floor of the router's hop: a bare ``/health/ping`` round trip to the router's own
    server (seldon-core's Flask app under gunicorn, doing nothing) and its ``/route`` called directly.

    The client is the gateway's own (aiohttp on uvloop, one keep-alive connection per server), so the
    floor is what the gateway's call to the router cannot go below."""
    import aiohttp

    from serving.aio import run
    from serving.client import prediction_request
    from training.data import FEATURES

    body = prediction_request(
        np.array([[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]), FEATURES
    )
    calls = {
        "bandit": ("POST", f"{bandit_ingress}/predictions"),
        "plain": ("POST", f"{plain_ingress}/predictions"),
        "router_ping": ("GET", f"{router}/health/ping"),
        "router_route": ("POST", f"{router}/route"),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}

    async def measure() -> None:
        async with aiohttp.ClientSession() as session:
            for i in range(n + 50):
                for name, (method, url) in calls.items():
                    start = time.perf_counter()
                    async with session.request(
                        method, url, json=body if method == "POST" else None
                    ) as answer:
                        await answer.read()
                        answer.raise_for_status()
                    if i >= 50:
                        times[name].append(time.perf_counter() - start)

    run(measure())
    p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
    added = p50["bandit"] - p50["plain"]
    return {
        "requests": n,
        "client": "aiohttp",
        "p50_ms": p50,
        "router_added_p50_ms": added,
        # how many bare HTTP round trips to the router's server the added time is
        "added_over_router_ping": added / p50["router_ping"],
    }


def plain_gateway(stack, folder: Path) -> tuple[subprocess.Popen, str]:
    """A second gateway serving the A/B manifest in front of the bandit stack's model servers."""
    from bench.servers import start_gateway

    manifest = folder / "model-a-b.yaml"
    shutil.copy(AB, manifest)
    return start_gateway(stack, manifest, folder, "plain-gateway")


def readme_block(result: dict) -> str:
    """The README's "Bandit or A/B test?" numbers, from a results file (``python -m scripts.readme``)."""
    from scripts.readme import describe

    better, worse = result["better_arm_index"], 1 - result["better_arm_index"]
    reward, regret, share = result["cumulative_reward"], result["regret"], result["share_to_better"]
    bias = result["bias"]
    live = result["estimates_live"]
    latency = result["latency"]
    arms = result["arms"]
    met = {t["target"]: t for t in result["targets"]}

    def goal(name: str) -> str:
        return "met" if met[name]["met"] else "**not met**"

    def interval(policy: str) -> str:
        return f"{bias[policy]['bias'][worse]:+.4f} ± {1.96 * bias[policy]['bias_se'][worse]:.4f}"

    counted = "yes" if result["router_counts_match"] else "**no**"

    def floor(latency: dict) -> str:
        p50 = latency["p50_ms"]
        below = p50["router_ping"] > GOALS["router_added_p50_ms"][1]
        return (
            f"The floor of that hop, in the same run and from the gateway's own client (aiohttp): a bare "
            f"`/health/ping` round trip to the router's "
            f"server (seldon-core's Flask app under gunicorn, doing nothing) takes "
            f"{p50['router_ping']:.2f} ms at p50 and its `/route` {p50['router_route']:.2f} ms, so the "
            f"router adds {latency['added_over_router_ping']:.2f}x one bare round trip"
            + (": 0.3 ms is less than one HTTP call to a Python microservice costs here." if below else ".")
        )

    return "\n".join(
        [
            f"From `{result['command'].strip()}` ({result['started'][:16].replace('T', ' ')} UTC; "
            f"{describe(result['machine'])}; source: `bench/results-bandit.json`): the "
            f"{result['rows']:,} hold-out rows in the same order through the bandit (Thompson sampling, "
            "learning live from each feedback) and through a 50/50 A/B split, each row's reward known "
            f"for both arms. {arms[better]} is the better arm (mean reward "
            f"{result['true_mean_reward'][better]:.3f} against {result['true_mean_reward'][worse]:.3f}).",
            "",
            "| | bandit (Thompson sampling) | A/B test, 50/50 |",
            "|---|---|---|",
            f"| cumulative reward (always {arms[better]}: {reward['always_better']:,.1f}) "
            f"| {reward['bandit']:,.1f} | {reward['ab']:,.1f} |",
            f"| regret against always {arms[better]} | {regret['bandit']:.1f} | {regret['ab']:.1f} |",
            f"| share of the second half to {arms[better]} | {share['bandit_second_half']:.1%} "
            f"| {share['ab_second_half']:.1%} |",
            f"| requests to {arms[worse]} | {live['requests_per_arm_bandit'][worse]:,} "
            f"| {live['requests_per_arm_ab'][worse]:,} |",
            f"| bias of {arms[worse]}'s mean-reward estimate over {result['repeats']} shuffles "
            f"(± 1.96 SE) | {interval('Thompson')} | {interval('A/B 50/50')} |",
            "",
            f"Goals: Thompson sampling sends {share['bandit_second_half']:.1%} of the second half to the "
            f"better arm (goal >= 80%: {goal('thompson_second_half_share')}); the router adds "
            f"{latency['router_added_p50_ms']:.2f} ms at p50 per request "
            f"({latency['p50_ms']['bandit']:.2f} against {latency['p50_ms']['plain']:.2f} ms through a plain "
            f"gateway to the same model servers, {latency['requests']:,} sequential requests each; "
            f"goal <= 0.3 ms: {goal('router_added_p50_ms')}). {floor(latency)} Every reward reached the "
            f"router exactly once: {counted} (its counts {result['router_state']['n']}).",
            "",
            robust_table(result),
        ]
    )


def robust_table(result: dict) -> str:
    """The Thompson posteriors' distributions over runs (serving/routers/thompson.py says why the
    router's is the student-t): a Markdown table."""
    better = result["arms"][result["better_arm_index"]]
    lines = [
        f"Not every run learns: a run is *stuck* when it sends less than half of its second half to "
        f"{better}. Each posterior over {result['repeats']} shuffles of the rows and, on the replay's "
        f"order, over {result['repeats']} router seeds (in process, the same router classes):",
        "",
        "| Thompson posterior | runs | 2nd half to the better arm (mean) | stuck runs | runs below 80% "
        "| regret: mean | regret: worst tenth of runs (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"Thompson": "**student-t** (the router's)", "Thompson (gaussian)": "gaussian, plug-in variance"}
    names["Thompson (beta)"] = "beta (Bernoulli trick)"
    for runs, where in ((result["bias"], "shuffles"), (result["seeds"], "router seeds")):
        for name, label in names.items():
            o = runs[name]
            lines.append(
                f"| {label} | {where} | {o['second_half_share_mean']:.1%} | {o['stuck_share']:.1%} "
                f"| {o['below_goal_share']:.1%} | {o['regret_mean']:.1f} | {o['regret_worst_decile']:.1f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="hold-out rows to replay (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="shuffles for the bias estimate (200)")
    parser.add_argument("--latency-requests", type=int, default=None, help="per ingress (1000)")
    parser.add_argument(
        "--quick", action="store_true", help=f"CI's size where not given: {QUICK} instead of {FULL}"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="an existing store with @a and @b (default: train into a temporary one)",
    )
    args = parser.parse_args(argv)
    # a SIGTERM (a test's timeout, Ctrl-C's sibling) unwinds through `finally`: the stack goes down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    from experiment import bandits
    from feedback import holdout_rows
    from scripts.readme import machine
    from serving.local import LocalStack

    started = datetime.now(UTC).isoformat(timespec="seconds")
    if not os.environ.get("WINE_QUALITY_CSV") and SHARED_DATA.is_file():
        os.environ["WINE_QUALITY_CSV"] = str(SHARED_DATA)
    folder = Path(tempfile.mkdtemp(prefix="bench-bandit-"))
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    else:
        from training.arms import train_arms

        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        train_arms()
    stack = LocalStack.up(BANDIT, port=0, state_dir=folder / "stack", timeout=300)
    plain = None
    try:
        rows = holdout_rows(limit=args.rows)
        predictions, rewards = bandits.counterfactual_rewards(stack.urls["models"], rows)
        live = bandits.live_replay(stack.ingress_url, rows)
        # the live replay's predictions are the arms' own (the gateway changed nothing)
        chosen = predictions[np.arange(len(rows)), live["arms"]]
        assert np.allclose(chosen, live["predictions"]), "a live prediction differs from its arm's"
        ab_arms = bandits.ab_assignment(len(rows), args.seed)
        state = bandits.router_state(folder / "stack")
        plain, plain_ingress = plain_gateway(stack, folder)
        timing = latency(
            stack.ingress_url,
            plain_ingress,
            # the router node's server is listed under its predictor's name
            stack.urls["models"][next(iter(stack.urls["predictors"]))],
            args.latency_requests,
        )
        result = {
            "started": started,
            "machine": machine(),
            "command": " ".join(["python -m bench.bandit", *(argv if argv is not None else sys.argv[1:])]),
            "repeats": args.repeats,
            **bandits.compare(rewards, live, ab_arms),
            "router_state": {"n": state["n"], "routed": state["routed"]},
            "bias": bandits.bias(rewards, args.repeats, args.seed),
            "seeds": bandits.seeds(rewards, args.repeats, args.seed),
            "latency": timing,
        }
        # every reward reached the router exactly once
        result["router_counts_match"] = state["n"] == np.bincount(live["arms"], minlength=2).tolist()
        targets = {
            "thompson_second_half_share": result["share_to_better"]["bandit_second_half"],
            "router_added_p50_ms": timing["router_added_p50_ms"],
        }
        result["targets"] = [
            {
                "target": k,
                "value": round(v, 4),
                "goal": f"{op} {goal}",
                "met": v >= goal if op == ">=" else v <= goal,
            }
            for k, v in targets.items()
            for op, goal in [GOALS[k]]
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        bandits.figure(result, live, rewards, ab_arms).savefig(args.figure, dpi=110)
    finally:
        if plain is not None:
            os.killpg(plain.pid, signal.SIGTERM)
            plain.wait(10)
        stack.down()
    print(
        json.dumps(
            {k: result[k] for k in ("cumulative_reward", "regret", "share_to_better", "targets")}, indent=2
        )
    )
    print(f"wrote {args.out} and {args.figure}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
