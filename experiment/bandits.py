"""Bandit against A/B test on the same hold-out rows in the same order: the numbers and one figure.

What bench/bandit.py and the bandit notebook (bandits.ipynb) both call::

    predictions, rewards = bandits.counterfactual_rewards(stack.urls["models"], rows)  # both arms
    live = bandits.live_replay(stack.ingress_url, rows)                    # the router learns
    ab_arms = bandits.ab_assignment(len(rows), seed)                       # a seeded 50/50 coin
    result = bandits.compare(rewards, live, ab_arms)
    result["bias"] = bandits.bias(rewards, repeats, seed)                  # in process, shuffled
    result["seeds"] = bandits.seeds(rewards, repeats, seed)                # this order, router seeds
    bandits.figure(result, live, rewards, ab_arms)

Regret needs each row's reward under both arms, so every arm answers every row once (the
counterfactual); the live replay's rewards are the chosen arm's. One replay cannot show the bias of
each arm's mean-reward estimate under an adaptive allocation (the bandit stops sampling an arm after
a few unlucky rewards, so its mean comes out low): ``bias`` repeats both policies over shuffles of
the rows with the same router classes in process, no HTTP. Nor can it show how often a policy gets
stuck on the worse arm: ``bias`` and ``seeds`` (the Thompson posteriors on this order, over router
seeds) keep each policy's distribution over runs, not just its mean.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

ARMS = ("model-a", "model-b")  # the bandit's children, in order (serving/model-bandit.yaml)
WINDOW = 100  # requests per point of the share-of-traffic curve
LABELS = {"Thompson": "Thompson (student-t: the router's)"}  # the default posterior, by name
STUCK, GOAL = 0.5, 0.8  # a run is stuck below STUCK of its second half to the better arm; the goal


def counterfactual(model_urls: dict[str, str], rows) -> np.ndarray:
    """Each arm's prediction for every row (one batch request per arm): shape (rows, arms)."""
    import requests

    from training.data import FEATURES

    body = {"data": {"names": FEATURES, "ndarray": rows[FEATURES].to_numpy().tolist()}}
    columns = []
    for arm in ARMS:
        answer = requests.post(f"{model_urls[arm]}/predict", json=body, timeout=120)
        answer.raise_for_status()
        columns.append(np.asarray(answer.json()["data"]["ndarray"], dtype=float).reshape(-1))
    return np.column_stack(columns)


def rewards_of(truth: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """``feedback.reward`` of each prediction: the same shape as ``predictions``."""
    from feedback import reward

    return np.array([[reward(t, p) for p in row] for t, row in zip(truth, predictions, strict=True)])


def counterfactual_rewards(model_urls: dict[str, str], rows) -> tuple[np.ndarray, np.ndarray]:
    """Every row's prediction and reward under each arm: two arrays of shape (rows, arms)."""
    from training.data import TARGET

    predictions = counterfactual(model_urls, rows)
    return predictions, rewards_of(rows[TARGET].to_numpy(dtype=float), predictions)


def live_replay(ingress: str, rows) -> dict:
    """One request then one feedback per row through the bandit's ingress, in order: the arm it
    chose (from ``meta.requestPath``, checked against ``meta.routing``), the reward, the prediction,
    and how many feedbacks the stack refused."""
    import requests

    from feedback import reward
    from serving.client import feedback_message, prediction_request
    from training.data import FEATURES, TARGET

    arms, got, predicted, refused = [], [], [], 0
    with requests.Session() as session:  # one keep-alive connection
        for features, truth in zip(rows[FEATURES].to_numpy(), rows[TARGET].to_numpy(), strict=True):
            request = prediction_request(features[None, :], FEATURES)
            answer = session.post(f"{ingress}/predictions", json=request, timeout=10)
            answer.raise_for_status()
            response = answer.json()
            arm = ARMS.index(next(iter(response["meta"]["requestPath"])))
            if response["meta"]["routing"]["router"] != arm:
                raise AssertionError(f"requestPath and routing disagree: {response['meta']}")
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
        "arms": np.array(arms, dtype=int),
        "rewards": np.array(got),
        "predictions": np.array(predicted),
        "refused": refused,
    }


def router_state(state_dir, node: str = "router") -> dict:
    """What the local stack's router node has persisted (serving/routers/bandit.py: its state file)."""
    return json.loads((Path(state_dir) / "routers" / f"{node}.json").read_text())


def ab_assignment(rows: int, seed: int) -> np.ndarray:
    """The A/B test's arm for each row: a seeded fair coin, as the gateway's 50/50 split."""
    return np.random.default_rng(seed).integers(0, len(ARMS), rows)


def estimates(arms: np.ndarray, got: np.ndarray) -> list[float]:
    """Each arm's mean reward as the policy saw it (NaN for an arm it never tried)."""
    return [float(got[arms == a].mean()) if (arms == a).any() else float("nan") for a in range(len(ARMS))]


def compare(rewards: np.ndarray, live: dict, ab_arms: np.ndarray) -> dict:
    """The bandit's live replay and the A/B test on the same rows: reward, regret, share, estimates."""
    rows = len(rewards)
    means = rewards.mean(axis=0)
    better = int(np.argmax(means))
    ab_got = rewards[np.arange(rows), ab_arms]
    half = rows // 2
    return {
        "rows": rows,
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
            "requests_per_arm_bandit": np.bincount(live["arms"], minlength=len(ARMS)).tolist(),
            "requests_per_arm_ab": np.bincount(ab_arms, minlength=len(ARMS)).tolist(),
        },
        "feedback_refused": live["refused"],
    }


def learning(live: dict, better: int, block: int = 200):
    """The live replay block by block: what the router sent where, and what it earned (a table)."""
    import pandas as pd

    arms, got = live["arms"], live["rewards"]
    starts = range(0, len(arms), block)
    return pd.DataFrame(
        {
            "requests": [f"{s + 1}-{min(s + block, len(arms))}" for s in starts],
            f"to {ARMS[better]}": [float((arms[s : s + block] == better).mean()) for s in starts],
            "mean reward": [float(got[s : s + block].mean()) for s in starts],
        }
    ).set_index("requests")


def simulate(router, rewards: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A router over ``rewards[order]`` in process: (arm per row, reward per row)."""
    arms = np.empty(len(order), dtype=int)
    for i, row in enumerate(order):
        arm = router.route(None, None)
        router.send_feedback(None, None, float(rewards[row, arm]), None, routing=arm)
        arms[i] = arm
    return arms, rewards[order, arms]


def policies() -> dict:
    """The policies the in-process runs compare: name -> router factory (None: the A/B test's coin).
    "Thompson" is the router's default posterior (serving/routers/thompson.py), the live one."""
    from serving.routers import EpsilonGreedy, ThompsonSampling

    logging.getLogger("serving.routers.bandit").setLevel(logging.ERROR)  # "state in memory only": yes

    def thompson(**posterior):
        return lambda s: ThompsonSampling(n_branches=2, seed=s, state_file="", **posterior)

    return {
        "A/B 50/50": None,
        "Thompson": thompson(),
        "Thompson (gaussian)": thompson(posterior="gaussian"),
        "Thompson (beta)": thompson(posterior="beta"),
        "epsilon-greedy": lambda s: EpsilonGreedy(n_branches=2, seed=s, epsilon=0.1, state_file=""),
    }


def outcomes(shares: list[float], regrets: list[float]) -> dict:
    """The distribution over runs, not just its mean: stuck runs and the worst tenth's regret."""
    shares, regrets = np.asarray(shares), np.sort(regrets)
    return {
        "second_half_share_mean": float(shares.mean()),
        "stuck_share": float((shares < STUCK).mean()),
        "below_goal_share": float((shares < GOAL).mean()),
        "regret_mean": float(regrets.mean()),
        "regret_worst_decile": float(regrets[-max(1, len(regrets) // 10) :].mean()),
        "regret_max": float(regrets[-1]),
        "regrets": np.round(regrets, 3).tolist(),  # sorted: the figure's boxes
    }


def bias(rewards: np.ndarray, repeats: int, seed: int) -> dict:
    """Every policy over ``repeats`` shuffles of the rows: the mean error of each arm's mean-reward
    estimate, and the distribution of the second half's share to the better arm and of regret."""
    truth = rewards.mean(axis=0)
    better = int(np.argmax(truth))
    makers = policies()
    rng = np.random.default_rng(seed)
    errors, shares, regrets = ({name: [] for name in makers} for _ in range(3))
    for r in range(repeats):
        order = rng.permutation(len(rewards))
        for name, make in makers.items():
            if make is None:
                arms = np.random.default_rng([seed, r]).integers(0, 2, len(order))
                got = rewards[order, arms]
            else:
                arms, got = simulate(make(seed * 1_000_003 + r), rewards, order)
            errors[name].append(np.array(estimates(arms, got)) - truth)
            shares[name].append(float((arms[len(arms) // 2 :] == better).mean()))
            regrets[name].append(float((rewards[order, better] - got).sum()))
    out = {}
    for name, errs in errors.items():
        errs = np.array(errs)
        out[name] = {
            "bias": np.nanmean(errs, axis=0).tolist(),
            "bias_se": (np.nanstd(errs, axis=0) / np.sqrt(np.sum(~np.isnan(errs), axis=0))).tolist(),
            **outcomes(shares[name], regrets[name]),
        }
    return out


def seeds(rewards: np.ndarray, repeats: int, seed: int) -> dict:
    """Each Thompson posterior on the rows' own order (the live replay's) over ``repeats`` router
    seeds: the live run is one of these draws, and one draw can be an unlucky one."""
    better = int(np.argmax(rewards.mean(axis=0)))
    out = {}
    for name, make in policies().items():
        if name.startswith("Thompson"):
            runs = [
                simulate(make(seed * 1_000_003 + r), rewards, np.arange(len(rewards))) for r in range(repeats)
            ]
            out[name] = outcomes(
                [float((arms[len(arms) // 2 :] == better).mean()) for arms, _ in runs],
                [float((rewards[:, better] - got).sum()) for _, got in runs],
            )
    return out


def robustness(result: dict):
    """The Thompson posteriors' distributions over runs, shuffled rows and the replay's order (a table)."""
    import pandas as pd

    table = {}
    for where, runs in (("shuffles", result["bias"]), ("replay order, router seeds", result["seeds"])):
        for name in result["seeds"]:
            o = runs[name]
            table[(where, LABELS.get(name, name))] = {
                "2nd half to better (mean)": o["second_half_share_mean"],
                f"runs < {STUCK:.0%} (stuck)": o["stuck_share"],
                f"runs < {GOAL:.0%}": o["below_goal_share"],
                "regret mean": o["regret_mean"],
                "regret, worst 10% (mean)": o["regret_worst_decile"],
                "regret max": o["regret_max"],
            }
    return pd.DataFrame(table).T


def summary(result: dict) -> str:
    """The comparison in a few Markdown sentences, every number from ``result``."""
    better, worse = result["better_arm_index"], 1 - result["better_arm_index"]
    arms, regret, share = result["arms"], result["regret"], result["share_to_better"]
    bias = result["bias"]
    return (
        f"On the same {result['rows']:,} rows in the same order, the bandit's regret against always "
        f"serving {arms[better]} is {regret['bandit']:.1f} against the A/B test's {regret['ab']:.1f}; "
        f"it sent {share['bandit_second_half']:.0%} of the second half to {arms[better]}, the A/B test "
        f"{share['ab_second_half']:.0%} (one order: over {result['repeats']} shuffles of the rows Thompson "
        f"sampling sent {bias['Thompson']['second_half_share_mean']:.0%} of the second half there on "
        f"average). The price: over those shuffles Thompson sampling misestimates {arms[worse]}'s mean "
        f"reward by {bias['Thompson']['bias'][worse]:+.4f} on average "
        f"(± {1.96 * bias['Thompson']['bias_se'][worse]:.4f}), the A/B test by "
        f"{bias['A/B 50/50']['bias'][worse]:+.4f} (± {1.96 * bias['A/B 50/50']['bias_se'][worse]:.4f})."
        + robust_sentence(result)
    )


def robust_sentence(result: dict) -> str:
    """How often each Thompson posterior got stuck, and its worst tenth of runs, in words."""
    labels = {"Thompson": "the router's student-t", "Thompson (gaussian)": "a plug-in gaussian"}
    labels["Thompson (beta)"] = "the Beta-Bernoulli trick"

    def listed(runs: dict) -> str:
        return "; ".join(
            f"{label}: {runs[name]['stuck_share']:.1%} stuck, worst tenth "
            f"{runs[name]['regret_worst_decile']:.1f}"
            for name, label in labels.items()
        )

    return (
        f" Not every run learns. Counting a run as stuck when it sends less than {STUCK:.0%} of its "
        f"second half to {result['arms'][result['better_arm_index']]}, and giving the mean regret of the "
        f"worst tenth of runs, over the {result['repeats']} shuffles: {listed(result['bias'])} (the A/B "
        f"test's worst tenth: {result['bias']['A/B 50/50']['regret_worst_decile']:.1f}). On this order, "
        f"over {result['repeats']} router seeds: {listed(result['seeds'])}."
    )


def figure(result: dict, live: dict, rewards: np.ndarray, ab_arms: np.ndarray):
    """Cumulative reward, regret, share of traffic to the better arm, bias: one matplotlib Figure
    (not registered with pyplot: a notebook shows it once, a script saves it)."""
    from matplotlib.figure import Figure

    better = result["better_arm_index"]
    rows = np.arange(1, len(live["arms"]) + 1)
    ab_got = rewards[np.arange(len(ab_arms)), ab_arms]
    fig = Figure(figsize=(16, 8.5))
    axes = fig.subplots(2, 3)
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
    ax = axes[0, 2]
    window = min(WINDOW, len(rows))
    for label, arms in (("bandit", live["arms"]), ("A/B test", ab_arms)):
        share = np.convolve(arms == better, np.ones(window) / window, mode="valid")
        ax.plot(rows[window - 1 :], share, label=label)
    ax.axhline(0.8, color="grey", ls=":", lw=1)
    ax.axvline(len(rows) / 2, color="grey", ls=":", lw=1)
    ax.set(
        title=f"Share of traffic to {ARMS[better]} (last {window} requests)",
        xlabel="requests",
        ylabel="share",
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    policies = ["A/B 50/50", "Thompson", "epsilon-greedy"]
    width = 0.8 / len(ARMS)
    for j, arm in enumerate(ARMS):
        values = [result["bias"][p]["bias"][j] for p in policies]
        errs = [1.96 * result["bias"][p]["bias_se"][j] for p in policies]
        ax.bar(np.arange(len(policies)) + (j - 0.5) * width, values, width, yerr=errs, capsize=3, label=arm)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(policies)), [p.replace("Thompson", "Thompson (student-t)") for p in policies])
    ax.set(
        title=f"Bias of each arm's mean-reward estimate ({result['repeats']} shuffles)",
        ylabel="estimate - true mean (95% CI)",
    )
    ax.legend(fontsize=8)
    names = {"A/B 50/50": "A/B", "Thompson": "student-t\n(router)", "epsilon-greedy": "eps-greedy"}
    names |= {"Thompson (gaussian)": "gaussian", "Thompson (beta)": "beta"}
    for ax, runs, where in (
        (axes[1, 1], result["bias"], f"{result['repeats']} shuffles of the rows"),
        (axes[1, 2], result["seeds"], f"this order, {result['repeats']} router seeds"),
    ):
        # whiskers at the 5th and 95th percentiles, the rest as points: the stuck runs are the outliers
        ax.boxplot([runs[p]["regrets"] for p in runs], whis=(5, 95), flierprops={"markersize": 3})
        ticks = [
            names[p] + ("" if p == "A/B 50/50" else f"\n{runs[p]['stuck_share']:.1%} stuck") for p in runs
        ]
        ax.set_xticks(np.arange(1, len(runs) + 1), ticks, fontsize=8)
        ax.set(title=f"Regret per run, {where}", ylabel="regret against always the better arm")
    axes[1, 2].scatter([1], [result["regret"]["bandit"]], color="red", zorder=3, label="the live run")
    axes[1, 2].legend(fontsize=8)
    regret, worse = result["regret"], 1 - better
    earns = "the bandit" if regret["bandit"] < regret["ab"] else "the A/B test"
    fig.suptitle(
        f"Bandit vs A/B test on {len(rows)} hold-out rows: {earns} earns more; bias of {ARMS[worse]}'s "
        f"estimate {result['bias']['Thompson']['bias'][worse]:+.4f} (Thompson) against "
        f"{result['bias']['A/B 50/50']['bias'][worse]:+.4f} (A/B test)",
        fontsize=11,
    )
    fig.tight_layout()
    return fig
