"""A/B/n: every challenger against the control, with a correction for multiple comparisons.

With k challengers there are k tests; at α each, the chance that at least one of them declares
a false winner grows towards kα. Holm's step-down procedure (Holm 1979) keeps that family-wise
error rate at most α under any dependence between the tests (they share the control's data, so
they are correlated) and rejects everything Bonferroni rejects and sometimes more, so it is
chosen over Bonferroni; Dunnett's test would be exact for many-to-one comparisons but assumes
equal variances, which these arms do not have. The family-wise rate, not the false discovery
rate (Benjamini-Hochberg), is the right target: one false winner means promoting a worse model.
Holm applied to always-valid p-values (experiment/sequential.py) stays valid at any stopping time.
``statsmodels.stats.multitest.multipletests`` does the correction.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

METHODS = {"holm": "holm", "bonferroni": "bonferroni"}


def adjust(p_values: Mapping[str, float], alpha: float = 0.05, method: str = "holm") -> pd.DataFrame:
    """Adjusted p-values and rejections for named p-values (Holm by default)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if not p_values:
        raise ValueError("no p-values to adjust")
    names = list(p_values)
    reject, adjusted, _, _ = multipletests([p_values[n] for n in names], alpha=alpha, method=METHODS[method])
    return pd.DataFrame(
        {"p_value": [p_values[n] for n in names], "adjusted_p": adjusted, "reject": reject}, index=names
    )


def compare(
    rows: pd.DataFrame, control: str, alpha: float = 0.05, method: str = "holm", confidence: float = 0.95
) -> pd.DataFrame:
    """Each other arm vs ``control`` on the served rows: difference, Welch p, adjusted p, decision.

    The confidence intervals are Bonferroni-widened (level 1 - α/k) so that they hold jointly.
    """
    arms = sorted(rows["arm"].astype(str).unique())
    if control not in arms:
        raise ValueError(f"no served rows for the control {control!r} (arms: {arms})")
    challengers = [a for a in arms if a != control]
    if not challengers:
        raise ValueError("an A/B/n comparison needs at least one arm besides the control")
    base = rows.loc[rows["arm"] == control, "reward"].to_numpy(dtype="float64")
    table = []
    joint = 1 - (1 - confidence) / len(challengers)
    for arm in challengers:
        y = rows.loc[rows["arm"] == arm, "reward"].to_numpy(dtype="float64")
        if len(y) < 2 or len(base) < 2:
            raise ValueError(f"{arm} or {control} served fewer than 2 requests: no test")
        test = stats.ttest_ind(y, base, equal_var=False)
        ci = test.confidence_interval(joint)
        table.append(
            {
                "arm": arm,
                "n": len(y),
                "n_control": len(base),
                "difference": float(y.mean() - base.mean()),
                "low": float(ci.low),
                "high": float(ci.high),
                "p_value": float(test.pvalue),
            }
        )
    out = pd.DataFrame(table).set_index("arm")
    corrected = adjust(out["p_value"].to_dict(), alpha, method)
    out["adjusted_p"] = corrected["adjusted_p"]
    out["significant"] = corrected["reject"]
    out["decision"] = [
        ("better" if d > 0 else "worse") if s else "no difference shown"
        for d, s in zip(out["difference"], out["significant"], strict=True)
    ]
    return out


def best(table: pd.DataFrame) -> str | None:
    """The challenger to promote: the significantly better one with the largest difference, if any."""
    better = table[table["significant"] & (table["difference"] > 0)]
    return None if better.empty else str(better["difference"].idxmax())


def monitor_all(
    rows: pd.DataFrame, control: str, design, covariates: Mapping[str, str] | None = None
) -> dict:
    """A/B/n with the always-valid test: each challenger against ``control`` at α/k (Bonferroni).

    Each comparison may stop at its own look, so the p-values are not read at one common time;
    Bonferroni's α/k per test bounds the family-wise error at every time without assuming any.
    ``covariates``: arm -> its covariate column, for CUPED-adjusted tests. Returns arm -> result.
    """
    from dataclasses import replace

    from experiment.sequential import monitor

    arms = sorted(rows["arm"].astype(str).unique())
    challengers = [a for a in arms if a != control]
    if control not in arms or not challengers:
        raise ValueError(f"need served rows for the control {control!r} and another arm (arms: {arms})")
    each = replace(design, alpha=design.alpha / len(challengers))
    return {
        arm: monitor(
            rows, control, arm, each, None if covariates is None else (covariates[control], covariates[arm])
        )
        for arm in challengers
    }
