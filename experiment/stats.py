"""Per-arm statistics from the per-request log, the power of the test and the sample size it needs."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from experiment.log import LogError, served_rows


@dataclass(frozen=True)
class ArmStats:
    arm: str
    n: int
    mean_reward: float
    reward_ci: tuple[float, float]  # t-interval
    reward_sd: float
    rmse: float
    rmse_ci: tuple[float, float]  # BCa bootstrap


def rmse_of(errors, axis=-1):
    return np.sqrt(np.mean(np.square(errors), axis=axis))


def bootstrap_ci(
    samples: tuple, statistic, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    """BCa bootstrap interval (scipy); a point interval when the data cannot vary."""
    if all(np.ptp(s) == 0 for s in samples):
        value = float(statistic(*samples))
        return value, value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            samples,
            statistic,
            confidence_level=confidence,
            n_resamples=resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def arm_stats(log, confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> dict[str, ArmStats]:
    """Per arm: n, mean reward with a t-interval, RMSE with a BCa bootstrap interval.

    Mean reward: the reward is bounded in (0, 1], so with hundreds of requests its mean is close
    to normal (CLT) and the Student t-interval is the standard, exact-enough choice.
    RMSE: sqrt(mean squared error) is a non-linear statistic of skewed data (errors of a
    discrete 3-9 quality score), so the chi-square interval, which assumes normal errors with
    mean zero, would be wrong; the bias-corrected and accelerated (BCa) bootstrap makes no such
    assumption and corrects for the skew. ``seed`` makes the bootstrap reproducible.
    """
    rows = served_rows(log)
    if rows.empty:
        raise LogError("the feedback log has no served rows")
    out = {}
    for arm, group in rows.groupby("arm", sort=True):
        rewards = group["reward"].to_numpy()
        errors = (group["truth"] - group["prediction"]).to_numpy()
        n = len(rewards)
        mean = float(rewards.mean())
        sd = float(rewards.std(ddof=1)) if n > 1 else float("nan")
        if n > 1 and sd > 0:
            low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=sd / math.sqrt(n))
        else:
            low, high = (mean, mean) if n > 1 else (float("nan"), float("nan"))
        rmse_ci = (
            bootstrap_ci((errors,), rmse_of, confidence, resamples, seed) if n > 1 else (float("nan"),) * 2
        )
        out[arm] = ArmStats(arm, n, mean, (float(low), float(high)), sd, float(rmse_of(errors)), rmse_ci)
    return out


def stats_table(arms: dict[str, ArmStats]) -> pd.DataFrame:
    """The per-arm numbers as a table for the notebook."""
    return pd.DataFrame(
        [
            {
                "arm": s.arm,
                "n": s.n,
                "mean reward": s.mean_reward,
                "reward 95% CI": f"{s.reward_ci[0]:.3f} to {s.reward_ci[1]:.3f}",
                "RMSE": s.rmse,
                "RMSE 95% CI": f"{s.rmse_ci[0]:.3f} to {s.rmse_ci[1]:.3f}",
            }
            for s in arms.values()
        ]
    ).set_index("arm")


def power(n: int, difference: float, sd_a: float, sd_b: float, alpha: float = 0.05) -> float:
    """Power of a two-sided Welch t-test with ``n`` requests per arm if the true difference is ``difference``.

    Exact under normality: the test statistic follows a noncentral t (``scipy.stats.nct``) with
    noncentrality ``difference / sqrt((sd_a² + sd_b²) / n)`` and Welch's degrees of freedom for
    equal group sizes.
    """
    if n < 2:
        return float("nan")
    var = sd_a**2 + sd_b**2
    if var == 0:
        return 1.0 if difference else alpha
    df = (n - 1) * var**2 / (sd_a**4 + sd_b**4)
    nc = difference / math.sqrt(var / n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, nc) + stats.nct.cdf(-critical, df, nc))


def required_n(
    difference: float, sd_a: float, sd_b: float, alpha: float = 0.05, target: float = 0.8
) -> float:
    """Smallest number of requests *per arm* at which ``power`` reaches ``target``; ``inf`` for no difference.

    The normal approximation n = (z₁₋α/₂ + z_power)² (sd_a² + sd_b²) / difference² gives the
    starting point; the exact noncentral-t power then decides (it needs a few more requests,
    the t distribution having heavier tails).
    """
    if not 0 < alpha < 1 or not 0 < target < 1:
        raise ValueError(f"alpha and power must be between 0 and 1, got {alpha}, {target}")
    if not all(map(math.isfinite, (difference, sd_a, sd_b))) or difference == 0:
        return math.inf
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target)
    low = 2
    high = max(3, math.ceil(z**2 * (sd_a**2 + sd_b**2) / difference**2))
    while power(high, difference, sd_a, sd_b, alpha) < target:  # the approximation is a lower bound, almost
        low, high = high, high * 2
    while low < high:  # power grows with n: bisect for the smallest n that reaches the target
        middle = (low + high) // 2
        if power(middle, difference, sd_a, sd_b, alpha) >= target:
            high = middle
        else:
            low = middle + 1
    return float(high)
