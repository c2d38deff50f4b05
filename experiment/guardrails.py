"""Guardrails: the candidate must not be worse than the control on latency (p95) or error rate.

Flagger, Argo Rollouts and SageMaker gate a rollout on fixed thresholds ("p95 under 500 ms");
here each guardrail is a one-sided non-inferiority test against the control measured in the same
experiment, with its margin in one visible configuration (``GUARDRAILS``):

- latency: H0 "the candidate's p95 is at least ``latency_ratio_margin`` times the control's".
  No closed form exists for a ratio of quantiles, so the bound is a bootstrap percentile interval
  (``scipy.stats.bootstrap``, two independent samples, the log of the ratio of the p95s).
- error rate: H0 "the candidate's error rate exceeds the control's by ``error_rate_margin`` or
  more", ``statsmodels.stats.proportion.test_proportions_2indep`` (difference, Agresti-Caffo), which
  behaves with zero errors in an arm.

Each result is ``pass`` (non-inferiority shown at one-sided α), ``breach`` (the candidate is worse
than the margin allows, shown at one-sided α) or ``inconclusive`` (not enough data either way).
Promotion needs every guardrail to pass; a breach during a monitored run rolls traffic back.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import test_proportions_2indep

PASS, BREACH, INCONCLUSIVE = "pass", "breach", "inconclusive"


@dataclass(frozen=True)
class GuardrailConfig:
    latency_quantile: float = 0.95
    # the candidate's p95 may be at most 20% above the control's
    latency_ratio_margin: float = 1.2
    # the candidate's error rate may be at most 1 percentage point above the control's
    error_rate_margin: float = 0.01
    alpha: float = 0.05  # one-sided, each guardrail
    resamples: int = 2000
    seed: int = 0


GUARDRAILS = GuardrailConfig()


@dataclass(frozen=True)
class GuardrailResult:
    name: str
    control: str
    treatment: str
    control_value: float
    treatment_value: float
    margin: float
    bound: tuple[float, float]  # one-sided (1-α) lower and upper bounds of the compared quantity
    p_value: float  # of the non-inferiority test (small = non-inferior)
    status: str
    n: dict

    @property
    def ok(self) -> bool:
        return self.status == PASS

    @property
    def sentence(self) -> str:
        return (
            f"{self.name}: {self.treatment} {self.treatment_value:.4g} "
            f"vs {self.control} {self.control_value:.4g} "
            f"(margin {self.margin:g}, bounds {self.bound[0]:.4g} to {self.bound[1]:.4g}, "
            f"non-inferiority p = {self.p_value:.3g}): {self.status}"
        )

    def record(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return self.sentence


def _status(low: float, high: float, margin: float) -> str:
    if high < margin:
        return PASS
    if low > margin:
        return BREACH
    return INCONCLUSIVE


def latency(
    control_ms, treatment_ms, control: str = "control", treatment: str = "treatment", config=GUARDRAILS
) -> GuardrailResult:
    """Non-inferiority of the candidate's latency quantile: ratio of p95s below ``latency_ratio_margin``."""
    c = np.asarray(control_ms, dtype="float64")
    t = np.asarray(treatment_ms, dtype="float64")
    c, t = c[np.isfinite(c)], t[np.isfinite(t)]
    if len(c) < 2 or len(t) < 2:
        raise ValueError(f"latency guardrail: need 2+ latencies per arm, got {len(c)} and {len(t)}")
    q = config.latency_quantile

    def log_ratio(x, y, axis=-1):
        return np.log(np.quantile(y, q, axis=axis)) - np.log(np.quantile(x, q, axis=axis))

    qc, qt = float(np.quantile(c, q)), float(np.quantile(t, q))
    if np.ptp(c) == 0 and np.ptp(t) == 0:
        low = high = math.exp(log_ratio(c, t))
        p_value = 0.0 if high < config.latency_ratio_margin else 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            boot = stats.bootstrap(
                (c, t),
                log_ratio,
                confidence_level=1 - 2 * config.alpha,  # its ends are the one-sided (1-α) bounds
                n_resamples=config.resamples,
                method="percentile",
                rng=np.random.default_rng(config.seed),
            )
        low, high = math.exp(boot.confidence_interval.low), math.exp(boot.confidence_interval.high)
        # percentile-bootstrap p-value of H0: ratio >= margin
        p_value = float((np.exp(boot.bootstrap_distribution) >= config.latency_ratio_margin).mean())
    return GuardrailResult(
        name=f"latency p{q * 100:g} (ratio)",
        control=control,
        treatment=treatment,
        control_value=qc,
        treatment_value=qt,
        margin=config.latency_ratio_margin,
        bound=(low, high),
        p_value=p_value,
        status=_status(low, high, config.latency_ratio_margin),
        n={control: len(c), treatment: len(t)},
    )


def error_rate(
    errors: Mapping[str, int], totals: Mapping[str, int], control: str, treatment: str, config=GUARDRAILS
) -> GuardrailResult:
    """Non-inferiority of the candidate's error rate: difference below ``error_rate_margin``.

    ``errors``/``totals`` per arm: from the log, or better from Prometheus's per-predictor counts by
    status code (a request that failed may never say in the log which arm it reached).
    """
    for arm in (control, treatment):
        if totals.get(arm, 0) < 1 or not 0 <= errors.get(arm, 0) <= totals[arm]:
            raise ValueError(f"error-rate guardrail: need 0 <= errors <= requests >= 1 for {arm}")
    e_t, n_t, e_c, n_c = (
        int(errors[treatment]),
        int(totals[treatment]),
        int(errors[control]),
        int(totals[control]),
    )
    margin = config.error_rate_margin
    with np.errstate(divide="ignore", invalid="ignore"):  # it also reports ratios, undefined at 0 errors
        smaller = test_proportions_2indep(
            e_t, n_t, e_c, n_c, value=margin, compare="diff", alternative="smaller"
        )
        larger = test_proportions_2indep(
            e_t, n_t, e_c, n_c, value=margin, compare="diff", alternative="larger"
        )
    # the one-sided (1-α) bounds are where each one-sided test stops rejecting; the tests decide
    status = (
        PASS if smaller.pvalue < config.alpha else BREACH if larger.pvalue < config.alpha else INCONCLUSIVE
    )
    diff = e_t / n_t - e_c / n_c
    half = stats.norm.ppf(1 - config.alpha) * math.sqrt(
        max(e_t / n_t * (1 - e_t / n_t), 1e-12) / n_t + max(e_c / n_c * (1 - e_c / n_c), 1e-12) / n_c
    )
    return GuardrailResult(
        name="error rate (difference)",
        control=control,
        treatment=treatment,
        control_value=e_c / n_c,
        treatment_value=e_t / n_t,
        margin=margin,
        bound=(diff - half, diff + half),
        p_value=float(smaller.pvalue),
        status=status,
        n={control: n_c, treatment: n_t},
    )


def from_log(log: pd.DataFrame, control: str, treatment: str, config=GUARDRAILS) -> list[GuardrailResult]:
    """Both guardrails from a log: ``predict_ms`` of answered requests, errors by ``predict_status``."""
    rows = log[log["arm"].astype(str).isin([control, treatment])]
    status = pd.to_numeric(rows["predict_status"], errors="coerce")
    ok = rows[status == 200]
    lat = latency(
        ok.loc[ok["arm"] == control, "predict_ms"],
        ok.loc[ok["arm"] == treatment, "predict_ms"],
        control,
        treatment,
        config,
    )
    errors = {a: int(((rows["arm"] == a) & (status != 200)).sum()) for a in (control, treatment)}
    totals = {a: int((rows["arm"] == a).sum()) for a in (control, treatment)}
    return [lat, error_rate(errors, totals, control, treatment, config)]


def all_pass(results: list[GuardrailResult]) -> bool:
    return all(r.ok for r in results)


def breached(results: list[GuardrailResult]) -> list[GuardrailResult]:
    return [r for r in results if r.status == BREACH]


@dataclass(frozen=True)
class Gate:
    """Whether promotion may go ahead, which arm, and every reason it may not."""

    promote: str | None  # the arm to promote, None to keep the control
    reasons: list[str]  # why not (empty when promoting)
    record: dict  # for the decision record: SRM, guardrails, the test

    @property
    def allowed(self) -> bool:
        return self.promote is not None

    @property
    def sentence(self) -> str:
        if self.allowed:
            return f"promote {self.promote}: the test chose it, the split is sound and every guardrail passed"
        return "no promotion: " + "; ".join(self.reasons)


def gate(srm_result, results: list[GuardrailResult], test) -> Gate:
    """Promotion's gate: a sound split (SRM), every guardrail passed, and the sequential test's winner.

    ``srm_result``: experiment.srm.SRM (from the log or Prometheus; pass the worse of the two);
    ``results``: the guardrails (``from_log`` or ``latency``/``error_rate`` on Prometheus counts);
    ``test``: experiment.sequential.SequentialResult. Any failure blocks, with its reason.
    """
    reasons = []
    if srm_result.mismatch:
        reasons.append(srm_result.sentence)
    reasons += [r.sentence for r in results if not r.ok]
    if test.winner is None:
        reasons.append(f"the sequential test decided {test.decision!r}: {test.reason}")
    elif test.winner == test.control:
        reasons.append(f"the sequential test found harm: {test.control} stays")
    record = {
        "srm": srm_result.record(),
        "guardrails": [r.record() for r in results],
        "test": test.record(),
    }
    return Gate(None if reasons else test.winner, reasons, record)
