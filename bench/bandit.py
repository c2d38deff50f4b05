"""A/B test against bandit on the same hold-out rows in the same order; one figure.

    .venv/bin/python -m bench.bandit                  # trains both arms into a temporary store
    .venv/bin/python -m bench.bandit --quick --out /tmp/bandit.json --figure /tmp/bandit.png  # CI's size

It starts its own local stack from serving/model-bandit.yaml (free loopback ports, its own state
folder; stopped by pid at the end) and:

1. asks each arm's model server for every hold-out row, so each row's reward is known for both
   arms (``feedback.reward``): the counterfactual that regret needs;
2. replays the rows through the bandit's ingress, in the hold-out order, one request and one
   feedback (the response as it came, with its ``meta.routing``) per row: the router learns live;
3. gives the A/B test the same rows in the same order, 50/50 by a seeded coin, rewards from (1);
4. repeats both over ``--repeats`` shuffles of the rows, in process (the same router classes,
   no HTTP) to measure the bias of each arm's mean-reward estimate, which one replay cannot show:
   an adaptive allocation stops sampling an arm after a few unlucky rewards, so its mean is
   biased low; the A/B test's is not;
5. measures what the router adds per request: sequential predictions through the bandit's
   ingress (gateway -> router -> arm) against a second gateway serving serving/model-a-b.yaml in
   front of the same two model servers (gateway -> arm), interleaved, p50 of each.

Results: bench/results-bandit.json (committed: the README's "Bandit or A/B test?" block is
rendered from it by ``readme_block``, ``python -m scripts.readme``) and images/bandit.png.
``--quick`` is the size tests/bench/test_bandit.py runs in CI (the first 400 hold-out rows, 20
shuffles, 100 latency requests). Goals (issue 15): Thompson sampling sends >= 80% of the second
half of the replay to the better arm; the router adds <= 0.3 ms at p50.
"""

from __future__ import annotations

import argparse
import json
import logging
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
import requests

REPO = Path(__file__).resolve().parents[1]
BANDIT = REPO / "serving" / "model-bandit.yaml"
AB = REPO / "serving" / "model-a-b.yaml"
RESULTS = REPO / "bench" / "results-bandit.json"
FIGURE = REPO / "images" / "bandit.png"
SHARED_DATA = REPO.parent / "shared" / "data" / "wine-quality.csv"  # offline machines and CI
ARMS = ("model-a", "model-b")
GOALS = {"thompson_second_half_share": (">=", 0.8), "router_added_p50_ms": ("<=", 0.3)}
FULL = {"rows": None, "repeats": 200, "latency_requests": 1000}
QUICK = {"rows": 400, "repeats": 20, "latency_requests": 100}  # CI: about a minute on 2 busy cores


def counterfactual(model_urls: dict[str, str], rows) -> np.ndarray:
    """Each arm's prediction for every row (one batch request per arm): shape (rows, arms)."""
    from training.data import FEATURES

    body = {"data": {"names": FEATURES, "ndarray": rows[FEATURES].to_numpy().tolist()}}
    columns = []
    for arm in ARMS:
        answer = requests.post(f"{model_urls[arm]}/predict", json=body, timeout=120)
        answer.raise_for_status()
        columns.append(np.asarray(answer.json()["data"]["ndarray"], dtype=float).reshape(-1))
    return np.column_stack(columns)


def rewards_of(truth: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    from feedback import reward

    return np.array([[reward(t, p) for p in row] for t, row in zip(truth, predictions, strict=True)])


def live_replay(ingress: str, rows, session: requests.Session) -> dict:
    """Predict then send feedback for each row through the bandit's ingress; what it chose."""
    from feedback import reward
    from serving.client import feedback_message, prediction_request
    from training.data import FEATURES, TARGET

    arms, got, predicted, refused = [], [], [], 0
    for features, truth in zip(rows[FEATURES].to_numpy(), rows[TARGET].to_numpy(), strict=True):
        request = prediction_request(features[None, :], FEATURES)
        answer = session.post(f"{ingress}/predictions", json=request, timeout=10)
        answer.raise_for_status()
        response = answer.json()
        arm = ARMS.index(next(iter(response["meta"]["requestPath"])))
        assert response["meta"]["routing"]["router"] == arm, response["meta"]
        prediction = float(np.ravel(response["data"]["ndarray"])[0])
        value = reward(truth, prediction)
        sent = session.post(
            f"{ingress}/feedback", json=feedback_message(request, response, value), timeout=10
        )
        refused += sent.status_code != 200
        arms.append(arm)
        got.append(value)
        predicted.append(prediction)
    return {
        "arms": np.array(arms),
        "rewards": np.array(got),
        "predictions": np.array(predicted),
        "refused": refused,
    }


def simulate(router, rewards: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A router over ``rewards[order]`` in process: (arm per row, reward per row)."""
    arms = np.empty(len(order), dtype=int)
    for i, row in enumerate(order):
        arm = router.route(None, None)
        router.send_feedback(None, None, float(rewards[row, arm]), None, routing=arm)
        arms[i] = arm
    return arms, rewards[order, arms]


def estimates(arms: np.ndarray, got: np.ndarray) -> list[float]:
    return [float(got[arms == a].mean()) if (arms == a).any() else float("nan") for a in range(len(ARMS))]


def bias(rewards: np.ndarray, repeats: int, seed: int) -> dict:
    """Mean error of each arm's mean-reward estimate over ``repeats`` shuffles, per policy."""
    from serving.routers import EpsilonGreedy, ThompsonSampling

    logging.getLogger("serving.routers.bandit").setLevel(logging.ERROR)  # "state in memory only": yes
    truth = rewards.mean(axis=0)
    rng = np.random.default_rng(seed)
    policies = {
        "A/B 50/50": None,
        "Thompson": lambda s: ThompsonSampling(n_branches=2, seed=s, state_file=""),
        "epsilon-greedy": lambda s: EpsilonGreedy(n_branches=2, seed=s, epsilon=0.1, state_file=""),
    }
    errors = {name: [] for name in policies}
    shares = {name: [] for name in policies}
    for r in range(repeats):
        order = rng.permutation(len(rewards))
        for name, make in policies.items():
            if make is None:
                arms = np.random.default_rng([seed, r]).integers(0, 2, len(order))
                got = rewards[order, arms]
            else:
                arms, got = simulate(make(seed * 1_000_003 + r), rewards, order)
            errors[name].append(np.array(estimates(arms, got)) - truth)
            shares[name].append(float((arms[len(arms) // 2 :] == np.argmax(truth)).mean()))
    out = {}
    for name, errs in errors.items():
        errs = np.array(errs)
        out[name] = {
            "bias": np.nanmean(errs, axis=0).tolist(),
            "bias_se": (np.nanstd(errs, axis=0) / np.sqrt(np.sum(~np.isnan(errs), axis=0))).tolist(),
            "second_half_share_mean": float(np.mean(shares[name])),
        }
    return out


def latency(bandit_ingress: str, plain_ingress: str, n: int) -> dict:
    """p50 of sequential 1-row predictions through each ingress, interleaved, after a warm-up."""
    from serving.client import prediction_request
    from training.data import FEATURES

    body = prediction_request(
        np.array([[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]), FEATURES
    )
    times: dict[str, list[float]] = {"bandit": [], "plain": []}
    with requests.Session() as session:
        for i in range(n + 50):
            for name, url in (("bandit", bandit_ingress), ("plain", plain_ingress)):
                start = time.perf_counter()
                session.post(f"{url}/predictions", json=body, timeout=10).raise_for_status()
                if i >= 50:
                    times[name].append(time.perf_counter() - start)
    p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
    return {"requests": n, "p50_ms": p50, "router_added_p50_ms": p50["bandit"] - p50["plain"]}


def plain_gateway(stack, folder: Path) -> tuple[subprocess.Popen, str]:
    """A second gateway serving the A/B manifest in front of the bandit stack's model servers."""
    from bench.servers import start_gateway

    manifest = folder / "model-a-b.yaml"
    shutil.copy(AB, manifest)
    return start_gateway(stack, manifest, folder, "plain-gateway")


def figure(result: dict, live: dict, rewards: np.ndarray, ab_arms: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    better = result["better_arm_index"]
    rows = np.arange(1, len(live["arms"]) + 1)
    ab_got = rewards[np.arange(len(ab_arms)), ab_arms]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    # the running mean separates the lines that the raw sums (in the legend) draw on top of each other
    for label, got, style in (
        (f"always {ARMS[better]} (the better arm)", rewards[:, better], {"color": "grey", "ls": "--"}),
        ("bandit (Thompson sampling, live)", live["rewards"], {}),
        ("A/B test, 50/50", ab_got, {}),
        (f"always {ARMS[1 - better]}", rewards[:, 1 - better], {"color": "grey", "ls": ":"}),
    ):
        # from the 50th request: the first few means swing over the whole axis
        start = min(50, len(rows) - 1)
        ax.plot(rows[start:], (np.cumsum(got) / rows)[start:], label=f"{label}: {got.sum():.0f}", **style)
    ax.set(
        title="Cumulative reward (legend), per request so far",
        xlabel="requests (hold-out rows, same order)",
        ylabel="cumulative reward / requests",
    )
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.plot(rows, np.cumsum(rewards[:, better] - live["rewards"]), label="bandit")
    ax.plot(rows, np.cumsum(rewards[:, better] - ab_got), label="A/B test")
    ax.set(title=f"Regret against always {ARMS[better]}", xlabel="requests", ylabel="cumulative regret")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    window = 100
    share = np.convolve(live["arms"] == better, np.ones(window) / window, mode="valid")
    ax.plot(rows[window - 1 :], share, label="bandit")
    ax.plot(
        rows[window - 1 :],
        np.convolve(ab_arms == better, np.ones(window) / window, mode="valid"),
        label="A/B test",
    )
    ax.axhline(0.8, color="grey", ls=":", lw=1)
    ax.axvline(len(rows) / 2, color="grey", ls=":", lw=1)
    ax.set(
        title=f"Share of traffic to {ARMS[better]} (last {window} requests)",
        xlabel="requests",
        ylabel="share",
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    policies = list(result["bias"])
    width = 0.8 / len(ARMS)
    for j, arm in enumerate(ARMS):
        values = [result["bias"][p]["bias"][j] for p in policies]
        errs = [1.96 * result["bias"][p]["bias_se"][j] for p in policies]
        ax.bar(np.arange(len(policies)) + (j - 0.5) * width, values, width, yerr=errs, capsize=3, label=arm)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(policies)), policies)
    ax.set(
        title=f"Bias of each arm's mean-reward estimate ({result['repeats']} shuffles)",
        ylabel="estimate - true mean (95% CI)",
    )
    ax.legend(fontsize=8)
    fig.suptitle(
        f"Bandit vs A/B test on {len(rows)} hold-out rows: the bandit earns more, "
        "the A/B test estimates both arms without bias",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
            f"goal <= 0.3 ms: {goal('router_added_p50_ms')}). Every reward reached the router exactly once: "
            f"{counted} (its counts {result['router_state']['n']}).",
        ]
    )


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

    from feedback import holdout_rows
    from scripts.readme import machine
    from serving.local import LocalStack
    from training.data import TARGET

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
        truth = rows[TARGET].to_numpy(dtype=float)
        predictions = counterfactual(stack.urls["models"], rows)
        rewards = rewards_of(truth, predictions)
        means = rewards.mean(axis=0)
        better = int(np.argmax(means))
        with requests.Session() as session:
            live = live_replay(stack.ingress_url, rows, session)
        # the live replay's predictions are the arms' own (the gateway changed nothing)
        chosen = predictions[np.arange(len(rows)), live["arms"]]
        assert np.allclose(chosen, live["predictions"]), "a live prediction differs from its arm's"
        ab_arms = np.random.default_rng(args.seed).integers(0, 2, len(rows))
        ab_got = rewards[np.arange(len(rows)), ab_arms]
        half = len(rows) // 2
        state = json.loads((folder / "stack" / "routers" / "router.json").read_text())
        plain, plain_ingress = plain_gateway(stack, folder)
        timing = latency(stack.ingress_url, plain_ingress, args.latency_requests)
        result = {
            "started": started,
            "machine": machine(),
            "command": " ".join(["python -m bench.bandit", *(argv if argv is not None else sys.argv[1:])]),
            "rows": len(rows),
            "repeats": args.repeats,
            "arms": list(ARMS),
            "true_mean_reward": means.tolist(),
            "better_arm": ARMS[better],
            "better_arm_index": better,
            "cumulative_reward": {
                "bandit": float(live["rewards"].sum()),
                "ab": float(ab_got.sum()),
                "always_better": float(rewards[:, better].sum()),
                "always_worse": float(rewards[:, 1 - better].sum()),
            },
            "regret": {
                "bandit": float((rewards[:, better] - live["rewards"]).sum()),
                "ab": float((rewards[:, better] - ab_got).sum()),
            },
            "share_to_better": {
                "bandit_first_half": float((live["arms"][:half] == better).mean()),
                "bandit_second_half": float((live["arms"][half:] == better).mean()),
                "ab_second_half": float((ab_arms[half:] == better).mean()),
            },
            "estimates_live": {
                "bandit": estimates(live["arms"], live["rewards"]),
                "ab": estimates(ab_arms, ab_got),
                "requests_per_arm_bandit": np.bincount(live["arms"], minlength=2).tolist(),
                "requests_per_arm_ab": np.bincount(ab_arms, minlength=2).tolist(),
            },
            "router_state": {"n": state["n"], "routed": state["routed"]},
            "feedback_refused": live["refused"],
            "bias": bias(rewards, args.repeats, args.seed),
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
        figure(result, live, rewards, ab_arms, args.figure)
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
