"""Sample ratio mismatch: were the arms served in the proportions the manifest configured?

A broken split (a routing bug, an arm that crashes and sheds traffic, feedback lost for one arm)
invalidates the comparison whatever its p-value says, so every verdict checks it first and a
mismatch blocks promotion. The test is Pearson's χ² goodness of fit of the served counts to the
configured weights, χ² = Σ (Oᵢ - Eᵢ)² / Eᵢ with Eᵢ = (wᵢ / Σw)·N and k - 1 degrees of freedom
(``scipy.stats.chisquare``), flagged at p < 0.001 as GrowthBook (``gbstats`` ``check_srm``),
Eppo and Statsig do: with a check on every experiment, a 0.05 threshold would cry wolf in one
experiment out of twenty. Weights that changed during the run (a promotion, a bandit) need the
expected counts per period: pass one (counts, weights) pair per period to ``check_srm_periods``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SRM:
    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    df: int
    p_value: float
    threshold: float = SRM_THRESHOLD
    source: str = "log"

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.threshold

    @property
    def ok(self) -> bool:
        return not self.mismatch

    @property
    def sentence(self) -> str:
        served = ", ".join(f"{a} {n:,} (expected {self.expected[a]:,.0f})" for a, n in self.counts.items())
        p = f"{self.p_value:.3g}"
        if self.mismatch:
            return (
                f"sample ratio mismatch ({self.source}): served {served}; χ² = {self.chi2:.2f}, "
                f"p = {p} < {self.threshold:g}: the split is broken, so the comparison is not trustworthy"
            )
        return f"no sample ratio mismatch ({self.source}): served {served}; χ² = {self.chi2:.2f}, p = {p}"

    def record(self) -> dict:
        return {
            "test": "chi-square goodness of fit of served counts to configured weights",
            "source": self.source,
            "counts": self.counts,
            "expected": self.expected,
            "chi2": self.chi2,
            "df": self.df,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "mismatch": self.mismatch,
        }

    def __str__(self) -> str:
        return self.sentence


def _weights(weights: Mapping[str, float]) -> dict[str, float]:
    w = {str(k): float(v) for k, v in weights.items()}
    if len(w) < 2:
        raise ValueError(f"a sample ratio check needs at least two arms with weights, got {w}")
    if any(not np.isfinite(v) or v <= 0 for v in w.values()):
        raise ValueError(f"every arm needs a positive weight (an arm with weight 0 gets no traffic): {w}")
    return w


def check_srm_periods(
    periods: Sequence[tuple[Mapping[str, int], Mapping[str, float]]],
    threshold: float = SRM_THRESHOLD,
    source: str = "log",
) -> SRM:
    """One χ² test over several periods with their own weights: Eᵢ = Σₚ (wₚᵢ / Σwₚ)·Nₚ."""
    if not periods:
        raise ValueError("no periods to check")
    arms: list[str] = []
    for _, weights in periods:
        arms += [a for a in _weights(weights) if a not in arms]
    observed = dict.fromkeys(arms, 0)
    expected = dict.fromkeys(arms, 0.0)
    for counts, weights in periods:
        w = _weights(weights)
        unknown = [a for a in counts if a not in w]
        if unknown:
            raise ValueError(f"served arm(s) {unknown} have no configured weight ({sorted(w)})")
        total = sum(int(n) for n in counts.values())
        for arm, weight in w.items():
            observed[arm] += int(counts.get(arm, 0))
            expected[arm] += weight / sum(w.values()) * total
    if sum(observed.values()) == 0:
        raise ValueError("no served requests to check")
    chi2, p_value = stats.chisquare([observed[a] for a in arms], [expected[a] for a in arms])
    return SRM(observed, expected, float(chi2), len(arms) - 1, float(p_value), threshold, source)


def check_srm(
    counts: Mapping[str, int],
    weights: Mapping[str, float],
    threshold: float = SRM_THRESHOLD,
    source: str = "log",
) -> SRM:
    """χ² of served ``counts`` per arm against the configured ``weights`` (any scale: 50/50, 0.5/0.5)."""
    return check_srm_periods([(counts, weights)], threshold, source)


def srm(rows: pd.DataFrame, weights: Mapping[str, float], threshold: float = SRM_THRESHOLD) -> SRM:
    """The check on a log: the served rows per arm (``experiment.log.served_rows``) against ``weights``."""
    counts = rows["arm"].astype(str).value_counts().to_dict()
    return check_srm({a: int(counts.get(a, 0)) for a in weights} | counts, weights, threshold, "log")
