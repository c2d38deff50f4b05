"""The mSPRT: its design, evidence, always-valid intervals and stopping rule (look after every request).

The test is the mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and Walsh,
"Always valid inference: continuous monitoring of A/B tests" (Operations Research 70(3), 2022;
arXiv 1512.04922, 2015/2017), on the Gaussian approximation of the difference of the arms' mean
rewards: after n_c, n_t requests the estimate D = mean_t - mean_c is close to N(θ, V) with
V = s_t²/n_t + s_c²/n_c (the plug-in variance the paper and Optimizely/Statsig use for two
samples). For a mixing distribution H over the alternative θ, the mixture likelihood ratio

    Λ = ∫ φ((D - θ)/√V) / φ((D - θ₀)/√V) dH(θ)

is a non-negative martingale under θ = θ₀, so by Ville's inequality P(Λ ever ≥ 1/α) ≤ α: the
experimenter may look after every request and stop whenever Λ ≥ 1/α, and the false-positive
rate stays at most α (asymptotically, with the variance estimated). Two mixtures are offered:

- ``"normal"``: H = N(θ₀, τ²), the paper's closed form
  Λ = √(V/(V+τ²)) · exp(τ²(D-θ₀)² / (2V(V+τ²))); with V = 2σ²/n this is the paper's
  √(2σ²/(2σ²+nτ²)) · exp(n²τ²(D-θ₀)²/(4σ²(2σ²+nτ²))). Power one against every θ ≠ θ₀.
- ``"two-point"`` (the default): H = ½δ(θ₀+δ) + ½δ(θ₀-δ) at the planned minimum effect δ:
  Λ = exp(-δ²/(2V)) · cosh(δ(D-θ₀)/V). This is Wald's SPRT of θ₀ against ±δ made two-sided
  (the paper allows any mixing distribution); it is the most efficient choice when the effect is
  near the planned one, which is what a planned experiment assumes. With Wald's lower boundary
  Λ ≤ β/(1-α) it also stops for futility ("the effect is much closer to 0 than to δ"); that
  stop never adds a false positive (it only ends the experiment without a rejection).

The always-valid p-value is p_n = min(1, min over m ≤ n of 1/Λ_m) (Johari et al., section 3).

The interval reported is the set of θ₀ the test does not reject (so it excludes 0 exactly when the
test rejects). For the normal mixture that is the normal-mixture confidence sequence (Robbins 1970;
Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Ann. Statist. 49(2), 2021; in its asymptotic form Waudby-Smith et al., "Time-uniform
central limit theory and asymptotic confidence sequences", 2021, which GrowthBook uses):
D ± √(2V(V+τ²)/τ² · log(√((V+τ²)/V)/α)), τ² tuned to be tightest at the planned n, valid at
every look at once; for the two-point mixture, D ± (V/δ)·arccosh(exp(δ²/(2V))/α).

No library on PyPI installs with this project's pins and does this (checked: gbstats needs
pandas 1.5, savvi needs numpy 2, spotify-confidence's sequential test is group-sequential with
a few planned looks, statsmodels has no always-valid test; confseq builds a C++ extension and
its normal-mixture bound is the same one-line formula); so the formulas are written here, and
tests/experiment/test_sequential.py checks them against the papers' forms.

Modules: this one is the test's design and boundaries; experiment/running.py the running
estimate of the difference (CUPED-adjusted or not) that it is applied to; experiment/sequential.py
the test run over a per-request log (``monitor``) or fed one request at a time (``Monitor``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from experiment.running import Running

WINNER, HARM, FUTILITY, PLANNED_N, CONTINUE = "winner", "harm", "futility", "planned n", "continue"
# requests per arm before the first look: the normal approximation, its plug-in variance and, with
# CUPED, the regression slope need that many; with 20 the CUPED test's A/A false-positive rate
# measured 5.5% (bench/experiments.py), with 100 5.0%; with the fully grown quality model
# (experiment/cuped.py) 5.35% at seed 0 and 5.06% averaged over seeds 0-3 (raw rewards: 4.78%)
MIN_N = 100
# integer codes of the decisions in the vectorised simulation (experiment/simulate.py)
DECISION_CODES = {WINNER: 1, HARM: -1, FUTILITY: 0, PLANNED_N: 2, CONTINUE: 3}
CODE_DECISIONS = {code: name for name, code in DECISION_CODES.items()}


@dataclass(frozen=True)
class Design:
    """The sequential test, fixed before the first request (experiment/planning.py fills it).

    ``mde``: the planned minimum effect, an absolute difference in mean reward (treatment minus
    control); ``n_max``: the planned requests per arm, where the experiment stops at the latest;
    ``min_n``: requests per arm before the first look (the variance must be estimable);
    ``futility``: stop when the evidence favours "no effect" over ±mde (Wald's lower boundary);
    ``sd``: the planned per-arm standard deviation of the reward, which tunes the confidence
    sequence to be tightest at the planned n (without it, τ = mde).
    """

    mde: float
    n_max: int
    sd: float | None = None
    alpha: float = 0.05
    beta: float = 0.2
    min_n: int = MIN_N
    mixture: str = "two-point"
    futility: bool = True

    def __post_init__(self):
        if not (math.isfinite(self.mde) and self.mde > 0):
            raise ValueError(f"the planned minimum effect must be a positive number, got {self.mde}")
        if not 0 < self.alpha < 1 or not 0 < self.beta < 1:
            raise ValueError(f"alpha and beta must be between 0 and 1, got {self.alpha}, {self.beta}")
        if self.mixture not in ("two-point", "normal"):
            raise ValueError(f"mixture must be 'two-point' or 'normal', got {self.mixture!r}")
        if not 2 <= self.min_n <= self.n_max:
            raise ValueError(f"need 2 <= min_n <= n_max, got min_n={self.min_n}, n_max={self.n_max}")

    @property
    def upper(self) -> float:
        """log(1/α): reject θ₀ when log Λ reaches it (Ville's inequality)."""
        return math.log(1 / self.alpha)

    @property
    def lower(self) -> float:
        """log(β/(1-α)): Wald's futility boundary."""
        return math.log(self.beta / (1 - self.alpha))

    @property
    def cs_tau2(self) -> float:
        """τ² of the normal-mixture confidence sequence, fixed before the first request."""
        if self.sd:
            return cs_tau2(2 * self.sd**2 / self.n_max, self.alpha)
        return self.mde**2

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- the statistics
def log_evidence_normal(difference, variance, tau2: float, theta0: float = 0.0):
    """log Λ of the normal-mixture mSPRT (Johari et al. 2017, eq. for the Gaussian case); vectorised."""
    d = np.asarray(difference, dtype="float64") - theta0
    v = np.asarray(variance, dtype="float64")
    return 0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2))


def log_evidence_two_point(difference, variance, delta: float, theta0: float = 0.0):
    """log Λ of the mSPRT whose mixture puts ½ on θ₀+δ and ½ on θ₀-δ: -δ²/(2V) + log cosh(δ(D-θ₀)/V)."""
    d = np.asarray(difference, dtype="float64") - theta0
    v = np.asarray(variance, dtype="float64")
    z = np.abs(delta * d / v)
    log_cosh = z + np.log1p(np.exp(-2 * z)) - math.log(2)  # stable for large z
    return -(delta**2) / (2 * v) + log_cosh


def log_evidence(difference, variance, design: Design, theta0: float = 0.0):
    """log Λ for the design's mixture (the normal mixture with τ² = ``design.cs_tau2``)."""
    if design.mixture == "normal":
        return log_evidence_normal(difference, variance, design.cs_tau2, theta0)
    return log_evidence_two_point(difference, variance, design.mde, theta0)


def confidence_sequence_two_point(difference, variance, alpha: float, delta: float):
    """(low, high): the θ₀ the two-point mSPRT does not reject, D ± (V/δ)·arccosh(exp(δ²/(2V))/α).

    Λ(θ₀) grows with |D - θ₀|, so the set is an interval; it never gets narrower than ±δ/2 (a
    test of 0 against ±δ cannot place the effect more finely), so it certifies the sign, not the size.
    """
    d = np.asarray(difference, dtype="float64")
    v = np.asarray(variance, dtype="float64")
    big = delta**2 / (2 * v) + math.log(1 / alpha)  # log of the arccosh argument, > 0
    half = v / delta * (big + np.log1p(np.sqrt(-np.expm1(-2 * big))))  # arccosh(e^L), stable
    return d - half, d + half


def interval(difference, variance, design: Design):
    """The always-valid interval of the design's own test: 0 is outside it exactly when the test rejects."""
    if design.mixture == "normal":
        return confidence_sequence(difference, variance, design.alpha, design.cs_tau2)
    return confidence_sequence_two_point(difference, variance, design.alpha, design.mde)


def always_valid_p(log_e, axis: int = -1):
    """p_n = min(1, min over m ≤ n of 1/Λ_m), along ``axis`` (the looks)."""
    return np.minimum(1.0, np.exp(-np.maximum.accumulate(np.asarray(log_e, dtype="float64"), axis=axis)))


def cs_tau2(v_opt: float, alpha: float) -> float:
    """The mixing variance that makes the normal-mixture CS tightest where the variance is ``v_opt``.

    Waudby-Smith et al. (2021), the approximate optimum ρ² = (-2 log α + log(-2 log α + 1)) / t*
    for unit-variance data at time t*; in variance units τ² = ρ²σ² with V* = σ²/t*.
    """
    a = -2 * math.log(alpha)
    return v_opt * (a + math.log(a + 1))


def confidence_sequence(difference, variance, alpha: float, tau2: float):
    """(low, high): the normal-mixture confidence sequence D ± √(2V(V+τ²)/τ² · log(√((V+τ²)/V)/α))."""
    d = np.asarray(difference, dtype="float64")
    v = np.asarray(variance, dtype="float64")
    half = np.sqrt(2 * v * (v + tau2) / tau2 * np.log(np.sqrt((v + tau2) / v) / alpha))
    return d - half, d + half


# ------------------------------------------------------------------------------- the decision
def first_stop(running: Running, log_e, design: Design, futility: bool | None = None):
    """(index of the stopping look or -1, decision code) per experiment (row); vectorised.

    A look counts once both arms have ``min_n`` requests. It stops at the first look where
    log Λ ≥ log(1/α) (winner if the treatment is ahead, harm if behind), or log Λ ≤ log(β/(1-α))
    (futility, when enabled), or both arms have ``n_max`` requests (planned n). A row that never
    stops within its requests gets index -1 and ``continue``.
    """
    futility = design.futility if futility is None else futility
    n_c, n_t, log_e, difference = np.broadcast_arrays(
        *(np.atleast_2d(a) for a in (running.n_control, running.n_treatment, log_e, running.difference))
    )
    looking = (np.minimum(n_c, n_t) >= design.min_n) & np.isfinite(log_e)
    reject = looking & (log_e >= design.upper)
    give_up = looking & (log_e <= design.lower) if futility else np.zeros_like(reject)
    planned = np.minimum(n_c, n_t) >= design.n_max
    stop = reject | give_up | planned
    any_stop = stop.any(axis=-1)
    index = np.where(any_stop, stop.argmax(axis=-1), -1)
    rows = np.arange(stop.shape[0])
    at = np.maximum(index, 0)
    code = np.full(stop.shape[0], DECISION_CODES[CONTINUE])
    code = np.where(any_stop & planned[rows, at], DECISION_CODES[PLANNED_N], code)
    code = np.where(any_stop & give_up[rows, at], DECISION_CODES[FUTILITY], code)
    won = difference[rows, at] > 0
    code = np.where(
        any_stop & reject[rows, at], np.where(won, DECISION_CODES[WINNER], DECISION_CODES[HARM]), code
    )
    return index, code
