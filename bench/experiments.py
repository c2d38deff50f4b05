"""The statistics benchmark: does the sequential test keep its false-positive rate, and what does it save?

    .venv/bin/python bench/experiments.py     # CPU only, seeded; writes bench/results.json["experiments"]
    .venv/bin/python bench/experiments.py --experiments 200 --no-write   # a quick look

In-process, no stack: both arms are trained as training/train.py trains them, on the training
rows; their rewards on the hold-out rows are what the replay measures (the served model is the
same model), so the effect between them is the hold-out's. The plan comes from a cross-validated
split of the training rows only (experiment/planning.py); the CUPED covariate from an offline
model fitted on the training rows only (experiment/cuped.py). Then, with a look after every request:

1. A/A: ``--experiments`` experiments whose arms both earn the control's hold-out rewards, up to the
   planned maximum per arm: how often the sequential test declares a difference (peeking at every
   request, no futility stop, so at its most exposed), against a Welch t-test re-run at every look.
2. A/B at the hold-out's effect: power and mean requests per arm to a decision, sequential (raw and
   CUPED-adjusted rewards) against one Welch test at the fixed-horizon n for 80% power (sized with
   the hold-out's own effect and sds, as the goal reads; also at the plan's n, like for like).
3. The CUPED variance ratio on the replay (hold-out) rewards.

Simulated experiments draw hold-out rows at random with replacement (experiment/simulate.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

# one thread per process: the machine has 2 cores and other work on it (OpenMP oversubscription
# made a 5 s tree fit take minutes)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/experiments.py` from anywhere

import numpy as np  # noqa: E402

import feedback  # noqa: E402
from experiment import cuped, planning, simulate  # noqa: E402
from experiment import sequential as seq  # noqa: E402
from experiment.stats import required_n  # noqa: E402
from training.arms import ARMS  # noqa: E402
from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout  # noqa: E402

RESULTS = REPO / "bench" / "results.json"
SHARED_DATA = REPO.parent / "shared" / "data" / "wine-quality.csv"
CONTROL, TREATMENT = "b", "a"  # the heavily regularised arm is the control; the effect is the same either way
MORE_POWER = (0.85, 0.9)  # planned powers of the CUPED test's extra rows (the plan's is 80%)
CHUNK = 250  # experiments simulated at once (memory: a few arrays of CHUNK × requests floats)


def replay_data(seed: int = SEED) -> dict:
    """Hold-out rewards and covariates per arm, validation rewards per arm; all from training rows only."""
    if not os.environ.get("WINE_QUALITY_CSV") and SHARED_DATA.is_file():
        os.environ["WINE_QUALITY_CSV"] = str(SHARED_DATA)
    train, holdout = split_holdout(load_wine_quality(), seed=seed)
    reward = np.vectorize(feedback.reward, otypes=["float64"])
    quality = cuped.QualityModel(seed=0).fit(train[FEATURES], train[TARGET])
    rewards, covariates = {}, {}
    for arm in (CONTROL, TREATMENT):
        model = planning.elastic_net(ARMS[arm], seed).fit(train[FEATURES], train[TARGET])
        predicted = model.predict(holdout[FEATURES])
        rewards[arm] = reward(holdout[TARGET].to_numpy(dtype="float64"), predicted)
        covariates[arm] = quality.expected_reward(holdout[FEATURES], predicted)
    validation = planning.validation_rewards(
        train, {a: ARMS[a] for a in (CONTROL, TREATMENT)}, FEATURES, TARGET
    )
    return {
        "rewards": rewards,
        "covariates": covariates,
        "validation": validation,
        "holdout_rows": len(holdout),
    }


def cuped_ratios(rewards: dict, covariates: dict) -> dict:
    """On the hold-out rewards: per arm 1 - ρ², and the variance of the adjusted difference over the raw one.

    For the difference, each arm serving half the rows: Lin's asymptotic variance (experiment/
    sequential.running_difference) over the raw one, both at the same n per arm.
    """
    per_arm = {a: cuped.variance_ratio(rewards[a], covariates[a]) for a in rewards}
    theta = {a: cuped.theta(rewards[a], covariates[a]) for a in rewards}
    residual = {a: per_arm[a] * rewards[a].var(ddof=1) for a in rewards}
    spread = np.var(theta[TREATMENT] * covariates[TREATMENT] - theta[CONTROL] * covariates[CONTROL], ddof=1)
    raw = sum(rewards[a].var(ddof=1) for a in rewards)
    adjusted = sum(residual.values()) + spread / 2  # N = 2n requests estimate the covariate means
    return {"per_arm": per_arm, "difference": float(adjusted / raw)}


def requests_for(n_per_arm: int) -> int:
    """Requests per simulated experiment so that both arms of a 50/50 split reach ``n_per_arm``.

    Each arm's count is Binomial(T, ½), standard deviation √T/2: 2n + 6√(2n) leaves each arm
    3√(2n) requests to spare, over 5.5 standard deviations (one experiment in 10⁷ falls short).
    """
    return math.ceil(2 * n_per_arm + 6 * math.sqrt(2 * n_per_arm))


def _chunks(total: int):
    done = 0
    while done < total:
        yield min(CHUNK, total - done)
        done += CHUNK


def aa(data: dict, design: seq.Design, experiments: int, rng) -> dict:
    """A/A: false-positive rates with a look after every request, up to the planned maximum per arm."""
    y = data["rewards"][CONTROL]
    x = data["covariates"][CONTROL]
    requests = requests_for(design.n_max)
    counts = {"sequential": 0, "sequential_cuped": 0, "sequential_with_futility": 0, "naive": 0, "fixed": 0}
    for size in _chunks(experiments):
        draws = simulate.draw(rng, y, y, size, requests, x, x)
        for key, adjusted, futility in (
            ("sequential", False, False),
            ("sequential_cuped", True, False),
            ("sequential_with_futility", False, True),
        ):
            _, code = simulate.sequential(draws, design, adjusted, futility)
            counts[key] += int(np.isin(code, [1, -1]).sum())
        counts["naive"] += int(simulate.naive_peeking(draws, design.alpha, design.min_n, design.n_max).sum())
        counts["fixed"] += int(
            np.isin(simulate.fixed_horizon(draws, design.n_max, design.alpha), [1, -1]).sum()
        )
    return {key: value / experiments for key, value in counts.items()} | {"requests_per_experiment": requests}


def ab(
    data: dict,
    design: seq.Design,
    n_fixed: int,
    experiments: int,
    rng,
    n_planned: int | None = None,
    more_cuped: dict[str, seq.Design] | None = None,
) -> dict:
    """A/B at the hold-out's effect: power and requests per arm to a decision.

    ``n_fixed``: the one-look test's n for the hold-out's own effect and sds (what the goal compares
    with; no plan could know it); ``n_planned``: the plan's one-look n, from the same validation split
    as the sequential design, for a like-for-like power; ``more_cuped``: other designs of the CUPED
    test (e.g. planned for more power), run on the same draws.
    """
    rewards, covariates = data["rewards"], data["covariates"]
    variants = {"raw": (design, False), "cuped": (design, True)}
    variants |= {key: (other, True) for key, other in (more_cuped or {}).items()}
    longest = max(d.n_max for d, _ in variants.values())
    requests = requests_for(max(longest, n_fixed, n_planned or 0))
    out = {key: ([], []) for key in variants} | {"fixed": [], "fixed_planned": []}
    for size in _chunks(experiments):
        draws = simulate.draw(
            rng,
            rewards[CONTROL],
            rewards[TREATMENT],
            size,
            requests,
            covariates[CONTROL],
            covariates[TREATMENT],
        )
        for key, (variant, adjusted) in variants.items():
            n, code = simulate.sequential(draws, variant, adjusted)
            out[key][0].append(n)
            out[key][1].append(code)
        out["fixed"].append(simulate.fixed_horizon(draws, n_fixed, design.alpha))
        if n_planned:
            out["fixed_planned"].append(simulate.fixed_horizon(draws, n_planned, design.alpha))
    result = {}
    for key in variants:
        n, code = np.concatenate(out[key][0]), np.concatenate(out[key][1])
        result[key] = {
            "power": float((code == seq.DECISION_CODES[seq.WINNER]).mean()),
            "wrong_winner": float((code == seq.DECISION_CODES[seq.HARM]).mean()),
            "futility": float((code == seq.DECISION_CODES[seq.FUTILITY]).mean()),
            "planned_n_reached": float((code == seq.DECISION_CODES[seq.PLANNED_N]).mean()),
            "mean_requests_per_arm": float(n.mean()),
            "median_requests_per_arm": float(np.median(n)),
        }
    fixed = np.concatenate(out["fixed"])
    result["fixed_power"] = float((fixed == seq.DECISION_CODES[seq.WINNER]).mean())
    if n_planned:
        planned = np.concatenate(out["fixed_planned"])
        result["fixed_planned_power"] = float((planned == seq.DECISION_CODES[seq.WINNER]).mean())
    return result


def run(experiments: int = 2000, seed: int = 0) -> dict:
    started = time.perf_counter()
    data = replay_data()
    rewards = data["rewards"]
    the_plan = planning.plan(data["validation"], CONTROL, TREATMENT)
    design = the_plan.design
    effect = float(rewards[TREATMENT].mean() - rewards[CONTROL].mean())
    sd = {a: float(rewards[a].std(ddof=1)) for a in rewards}
    n_fixed = int(required_n(effect, sd[CONTROL], sd[TREATMENT]))
    ratios = cuped_ratios(rewards, data["covariates"])
    rng = np.random.default_rng(seed)
    null = aa(data, design, experiments, rng)
    # the CUPED test's futility boundary planned for more power, the same cap: what power costs
    more_power = {
        f"sequential_cuped_planned_power_{round(100 * power)}": replace(design, beta=round(1 - power, 12))
        for power in MORE_POWER
    }
    alt = ab(data, design, n_fixed, experiments, rng, the_plan.n_fixed, more_power)
    se = lambda p: math.sqrt(p * (1 - p) / experiments)  # noqa: E731
    results = {
        "aa_false_positive_rate_sequential": null["sequential"],
        "aa_false_positive_rate_sequential_cuped": null["sequential_cuped"],
        "aa_false_positive_rate_sequential_with_futility": null["sequential_with_futility"],
        "aa_false_positive_rate_naive_peeking": null["naive"],
        "aa_false_positive_rate_fixed_horizon": null["fixed"],
        "aa_standard_error_at_5_percent": se(0.05),
        "fixed_horizon_requests_per_arm": n_fixed,
        "power_fixed_horizon": alt["fixed_power"],
        "power_fixed_horizon_at_planned_n": alt["fixed_planned_power"],
        "mean_requests_to_decision_sequential": alt["raw"]["mean_requests_per_arm"],
        "power_sequential": alt["raw"]["power"],
        "mean_requests_to_decision_sequential_cuped": alt["cuped"]["mean_requests_per_arm"],
        "power_sequential_cuped": alt["cuped"]["power"],
        "sequential_vs_fixed": alt["raw"]["mean_requests_per_arm"] / n_fixed,
        "sequential_cuped_vs_fixed": alt["cuped"]["mean_requests_per_arm"] / n_fixed,
        "cuped_variance_ratio": ratios["difference"],
        "cuped_variance_ratio_per_arm": ratios["per_arm"],
        "sequential": alt["raw"],
        "sequential_cuped": alt["cuped"],
        **{key: alt[key] | {"vs_fixed": alt[key]["mean_requests_per_arm"] / n_fixed} for key in more_power},
        "holdout_effect": effect,
        "holdout_sd": sd,
        "plan": the_plan.record() | {"control": CONTROL, "treatment": TREATMENT},
        "parameters": {
            "experiments": experiments,
            "seed": seed,
            "looks": "after every request, from min_n per arm to the planned n_max per arm",
            "aa_requests_per_experiment": null["requests_per_experiment"],
            "holdout_rows": data["holdout_rows"],
            "covariate": "expected reward of each arm given the features (extra trees on the training rows)",
        },
        "goals": {
            "aa_false_positive_rate_sequential": ["<=", 0.05, "within simulation error"],
            "aa_false_positive_rate_sequential_cuped": ["<=", 0.05, "within simulation error"],
            "sequential_cuped_vs_fixed": ["<=", 0.5, "mean requests per arm, over the fixed-horizon n"],
            "power_sequential_cuped_not_less": [">=", "power_fixed_horizon", "measured"],
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    results["goals_met"] = {
        # "within simulation error": at most two standard errors above 5%
        "aa_false_positive_rate_sequential": null["sequential"] <= 0.05 + 2 * se(0.05),
        "aa_false_positive_rate_sequential_cuped": null["sequential_cuped"] <= 0.05 + 2 * se(0.05),
        "sequential_cuped_vs_fixed": results["sequential_cuped_vs_fixed"] <= 0.5,
        # "with no less power", read strictly: the measured powers, not within simulation error
        "power_sequential_cuped_not_less": alt["cuped"]["power"] >= alt["fixed_power"],
    }
    return results


def write(results: dict, path: Path = RESULTS) -> None:
    """Set the ``experiments`` key of bench/results.json and leave every other byte as it was."""
    text = path.read_text(encoding="utf-8") if path.exists() else "{}"
    document = json.loads(text)
    if json.dumps(document, indent=2, ensure_ascii=False) != text and text != "{}":
        raise SystemExit(f"{path} is not in the json.dumps(indent=2) form; not rewriting it")
    document["experiments"] = results
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=2000, help="simulated experiments of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only, leave bench/results.json alone")
    args = parser.parse_args(argv)
    if args.experiments < 10:
        parser.error("--experiments must be at least 10")
    results = run(args.experiments, args.seed)
    summary = {k: v for k, v in results.items() if not isinstance(v, dict)}
    print(json.dumps(summary | {"goals_met": results["goals_met"]}, indent=2))
    if not args.no_write:
        write(results)
        print(f"wrote {RESULTS.relative_to(REPO)}['experiments']")
    return 0


if __name__ == "__main__":
    sys.exit(main())
