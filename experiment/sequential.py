"""An always-valid sequential test of the difference in mean reward: look after every request, stop early.

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

Variance reduction: ``running_difference`` optionally adjusts each arm's mean by regression on a
covariate computed from the request's features before assignment (experiment/cuped.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

WINNER, HARM, FUTILITY, PLANNED_N, CONTINUE = "winner", "harm", "futility", "planned n", "continue"
# requests per arm before the first look: the normal approximation, its plug-in variance and, with
# CUPED, the regression slope need that many; with 20 the CUPED test's A/A false-positive rate
# measured 5.5% (bench/experiments.py), with 100 5.0%
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


# ------------------------------------------------------------------- running estimates per look
@dataclass(frozen=True)
class Running:
    """Per look (one per request, along the last axis): counts, the difference and its variance."""

    n_control: np.ndarray
    n_treatment: np.ndarray
    difference: np.ndarray  # treatment - control, regression-adjusted when covariates were given
    variance: np.ndarray  # of ``difference``; nan before both arms have 2 requests


def _terms(y, treated, xc=None, xt=None) -> dict:
    """Per request, what each running sum adds: counts, rewards, covariates, their squares and products."""
    terms = {}
    for arm, mask, x in (("c", ~treated, xc), ("t", treated, xt)):
        m = mask.astype("float64")
        terms |= {f"n_{arm}": m, f"y_{arm}": m * y, f"yy_{arm}": m * y * y}
        if x is not None:
            terms |= {f"x_{arm}": m * x, f"xx_{arm}": m * x * x, f"xy_{arm}": m * x * y}
    if xc is not None:  # the covariates of every request, whichever arm served it
        terms |= {"N": np.ones_like(y), "Xc": xc, "Xt": xt, "XcXc": xc * xc, "XtXt": xt * xt, "XcXt": xc * xt}
    return terms


def _estimate(s: dict) -> Running:
    """The (adjusted) difference and its variance from running sums (arrays or scalars)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        arm = {}
        for k in ("c", "t"):
            n = s[f"n_{k}"]
            mean_y = s[f"y_{k}"] / n
            var_y = np.maximum((s[f"yy_{k}"] - n * mean_y**2) / (n - 1), 0.0)
            arm[k] = {"n": n, "mean_y": mean_y, "var_y": var_y}
            if f"x_{k}" in s:
                mean_x = s[f"x_{k}"] / n
                var_x = np.maximum((s[f"xx_{k}"] - n * mean_x**2) / (n - 1), 0.0)
                cov = (s[f"xy_{k}"] - n * mean_x * mean_y) / (n - 1)
                theta = np.where(var_x > 0, cov / np.where(var_x > 0, var_x, 1.0), 0.0)
                arm[k] |= {"mean_x": mean_x, "var_x": var_x, "theta": theta}
        c, t = arm["c"], arm["t"]
        if "N" not in s:
            return Running(
                c["n"], t["n"], t["mean_y"] - c["mean_y"], t["var_y"] / t["n"] + c["var_y"] / c["n"]
            )
        total = s["N"]
        mu = {"c": s["Xc"] / total, "t": s["Xt"] / total}
        for k, a in arm.items():
            a["adjusted"] = a["mean_y"] - a["theta"] * (a["mean_x"] - mu[k])
            # residual variance of a fit with two parameters: n - 2 degrees of freedom
            a["residual"] = (
                np.maximum(a["var_y"] - a["theta"] ** 2 * a["var_x"], 0.0) * (a["n"] - 1) / (a["n"] - 2)
            )
        # variance, over all requests, of θ_t x_t - θ_c x_c
        s_cc = s["XcXc"] / total - mu["c"] ** 2
        s_tt = s["XtXt"] / total - mu["t"] ** 2
        s_ct = s["XcXt"] / total - mu["c"] * mu["t"]
        th_c, th_t = c["theta"], t["theta"]
        spread = np.maximum(th_t**2 * s_tt + th_c**2 * s_cc - 2 * th_t * th_c * s_ct, 0.0)
        variance = t["residual"] / t["n"] + c["residual"] / c["n"] + spread / total
    return Running(c["n"], t["n"], t["adjusted"] - c["adjusted"], variance)


def _inputs(y, treated, x_control, x_treatment):
    y = np.asarray(y, dtype="float64")
    treated = np.asarray(treated, dtype=bool)
    if y.shape != treated.shape:
        raise ValueError(f"rewards and assignments differ in shape: {y.shape} vs {treated.shape}")
    if x_control is None and x_treatment is None:
        return y, treated, None, None
    if x_control is None or x_treatment is None:
        raise ValueError("covariates need both x_control and x_treatment (the same array twice is fine)")
    xc, xt = np.asarray(x_control, dtype="float64"), np.asarray(x_treatment, dtype="float64")
    if xc.shape != y.shape or xt.shape != y.shape:
        raise ValueError("each covariate needs one value per request")
    return y, treated, xc, xt


def running_difference(y, treated, x_control=None, x_treatment=None) -> Running:
    """The difference treatment - control after every request, and its variance; vectorised over rows.

    ``y``: rewards in request order (1-D, or 2-D with one simulated experiment per row);
    ``treated``: True where the treatment arm served the request. Without covariates the
    difference is that of the arms' means and V = s_t²/n_t + s_c²/n_c.

    With covariates, each arm's mean is regression-adjusted (CUPED, Deng et al. 2013, with a slope
    per arm as in Lin, "Agnostic notes on regression adjustments to experimental data", Ann.
    Appl. Stat. 7(1), 2013): ``x_control[i]`` / ``x_treatment[i]`` are what the control's /
    the treatment's covariate function gives for request i's features, known for *every*
    request whichever arm served it (so they cannot depend on the assignment). Arm k's adjusted
    mean is ȳ_k - θ_k(x̄_k - μ_k), θ_k = cov_k(y, x_k)/var_k(x_k) within arm k, μ_k the mean of
    x_k over all requests so far. Its variance is the residual variance (s²_y - θ_k² s²_x)/n_k
    per arm (on n_k - 2 degrees of freedom), plus Var(θ_t x_t - θ_c x_c)/N for the covariate
    means estimated from all N requests (Lin 2013, Theorem 2's asymptotic variance).
    """
    terms = _terms(*_inputs(y, treated, x_control, x_treatment))
    return _estimate({k: np.cumsum(v, axis=-1) for k, v in terms.items()})


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


# ------------------------------------------------------------------------------ on a real log
@dataclass(frozen=True)
class SequentialResult:
    """The monitored experiment's outcome: what it decided, at which look, and why."""

    control: str
    treatment: str
    decision: str  # winner / harm / futility / planned n / continue
    reason: str
    look: int | None  # 1-based request number (among both arms' served requests) where it stopped
    request_id: object  # the log's request_id at that look
    n: dict  # requests per arm at the stop (or at the end of the log)
    difference: float  # treatment - control (adjusted when covariates were used)
    interval: tuple[float, float]  # the always-valid interval of the test at that look
    e_value: float  # Λ at that look
    p_value: float  # always-valid
    adjusted: bool  # regression-adjusted on pre-assignment covariates
    design: Design
    looks: pd.DataFrame  # one row per request: n, difference, low, high, log_e, p_value

    @property
    def stopped(self) -> bool:
        return self.decision != CONTINUE

    @property
    def winner(self) -> str | None:
        return {WINNER: self.treatment, HARM: self.control}.get(self.decision)

    @property
    def sentence(self) -> str:
        low, high = self.interval
        where = f"at request {self.look:,}" if self.look else "after every request of the log"
        numbers = (
            f"{self.treatment} - {self.control} = {self.difference:+.4f} "
            f"(always-valid {1 - self.design.alpha:.0%} interval {low:+.4f} to {high:+.4f}, "
            f"e-value {self.e_value:.3g}, always-valid p = {self.p_value:.3g}, "
            f"n = {self.n[self.control]}/{self.n[self.treatment]})"
        )
        return f"{self.decision} {where}: {self.reason}; {numbers}."

    def record(self) -> dict:
        """What promotion's decision record keeps: the test, n per arm, estimate, interval, p and e."""
        rewards = "CUPED-adjusted" if self.adjusted else "raw"
        return {
            "test": f"mSPRT ({self.design.mixture} mixture), {rewards} rewards",
            "control": self.control,
            "treatment": self.treatment,
            "decision": self.decision,
            "reason": self.reason,
            "look": self.look,
            "request_id": None if self.request_id is None else str(self.request_id),
            "n": {k: int(v) for k, v in self.n.items()},
            "difference": self.difference,
            "interval": list(self.interval),
            "e_value": self.e_value,
            "p_value": self.p_value,
            "design": self.design.as_dict(),
        }

    def __str__(self) -> str:
        return self.sentence


def _reason(decision: str, design: Design) -> str:
    return {
        WINNER: f"the evidence reached 1/α = {1 / design.alpha:g} with the treatment ahead",
        HARM: f"the evidence reached 1/α = {1 / design.alpha:g} with the treatment behind",
        FUTILITY: (
            f"the evidence fell to β/(1-α) = {design.beta / (1 - design.alpha):.3g}: "
            f"no effect is likelier than one of ±{design.mde:g}"
        ),
        PLANNED_N: f"both arms reached the planned {design.n_max:,} requests without a decision",
        CONTINUE: "no boundary reached and fewer than the planned requests so far",
    }[decision]


def monitor(
    rows: pd.DataFrame,
    control: str,
    treatment: str,
    design: Design,
    covariates: tuple[str, str] | None = None,
) -> SequentialResult:
    """Run the sequential test over a per-request log in request order, as if looking after each request.

    ``rows``: served rows (``experiment.log.served_rows``) of the two arms, in the order the
    requests were made, with ``arm`` and ``reward`` (and ``request_id``); other arms' rows are
    ignored. ``covariates``: names of two columns holding, for every row, the control's and the
    treatment's pre-assignment covariate (experiment/cuped.py) for a regression-adjusted test.
    """
    rows = rows[rows["arm"].isin([control, treatment])]
    missing = [a for a in (control, treatment) if not (rows["arm"] == a).any()]
    if missing:
        raise ValueError(f"no served rows for {missing}")
    treated = (rows["arm"] == treatment).to_numpy()
    y = rows["reward"].to_numpy(dtype="float64")
    x = (None, None)
    if covariates is not None:
        absent = [c for c in covariates if c not in rows.columns]
        if absent:
            raise ValueError(f"the log has no covariate column(s) {absent}")
        x = tuple(rows[c].to_numpy(dtype="float64") for c in covariates)
    run = running_difference(y, treated, *x)
    log_e = log_evidence(run.difference, run.variance, design)
    low, high = interval(run.difference, run.variance, design)
    looks = pd.DataFrame(
        {
            "request": np.arange(1, len(y) + 1),
            "request_id": rows["request_id"].to_numpy()
            if "request_id" in rows.columns
            else np.arange(len(y)),
            f"n_{control}": run.n_control.astype(int),
            f"n_{treatment}": run.n_treatment.astype(int),
            "difference": run.difference,
            "low": low,
            "high": high,
            "log_e": log_e,
            "p_value": always_valid_p(np.where(np.isfinite(log_e), log_e, 0.0)),
        }
    )
    index, code = first_stop(run, log_e, design)
    i = int(index[0])
    decision = CODE_DECISIONS[int(code[0])]
    at = i if i >= 0 else len(y) - 1
    row = looks.iloc[at]
    return SequentialResult(
        control=control,
        treatment=treatment,
        decision=decision,
        reason=_reason(decision, design),
        look=i + 1 if i >= 0 else None,
        request_id=row["request_id"] if i >= 0 else None,
        n={control: int(row[f"n_{control}"]), treatment: int(row[f"n_{treatment}"])},
        difference=float(row["difference"]),
        interval=(float(row["low"]), float(row["high"])),
        e_value=float(np.exp(row["log_e"])) if np.isfinite(row["log_e"]) else float("nan"),
        p_value=float(row["p_value"]),
        adjusted=covariates is not None,
        design=design,
        looks=looks,
    )


class Monitor:
    """The same test fed one request at a time, for a replay that stops when the test decides.

    ``add`` costs O(1) (it updates running sums) and returns the decision at that look:
    ``continue`` until a boundary or the planned n is reached, then winner / harm / futility /
    planned n (and it stays there). ``stopped_at`` is the look (1-based request number) where it
    stopped, which the log should record.

        monitor = Monitor(plan.design, "b", "a")
        for row in replay:                       # in the order the requests complete
            if monitor.add(row.arm, row.reward) != CONTINUE:
                break
    """

    def __init__(self, design: Design, control: str, treatment: str, adjusted: bool = False):
        self.design, self.control, self.treatment, self.adjusted = design, control, treatment, adjusted
        self.sums: dict[str, np.float64] = {}
        self.looks = 0
        self.decision = CONTINUE
        self.stopped_at: int | None = None
        self.last: dict = {}

    def add(
        self, arm: str, reward: float, x_control: float | None = None, x_treatment: float | None = None
    ) -> str:
        """Count one served request of ``arm`` (other arms are ignored) and return the decision."""
        if self.decision != CONTINUE or arm not in (self.control, self.treatment):
            return self.decision
        if self.adjusted and (x_control is None or x_treatment is None):
            raise ValueError("an adjusted monitor needs both covariates of every request")
        x = (
            (np.array([x_control], dtype="float64"), np.array([x_treatment], dtype="float64"))
            if self.adjusted
            else ()
        )
        for key, value in _terms(np.array([float(reward)]), np.array([arm == self.treatment]), *x).items():
            self.sums[key] = (
                self.sums.get(key, np.float64(0.0)) + value[0]
            )  # numpy scalars: x/0 is inf, not an error
        self.looks += 1
        run = _estimate(self.sums)
        log_e = log_evidence(run.difference, run.variance, self.design)
        _, code = first_stop(run, log_e, self.design)
        low, high = interval(run.difference, run.variance, self.design)
        self.last = {
            "look": self.looks,
            "n": {self.control: int(run.n_control), self.treatment: int(run.n_treatment)},
            "difference": float(run.difference),
            "interval": (float(low), float(high)),
            "log_e": float(log_e),
        }
        self.decision = CODE_DECISIONS[int(code[0])]
        if self.decision != CONTINUE:
            self.stopped_at = self.looks
        return self.decision

    @property
    def reason(self) -> str:
        return _reason(self.decision, self.design)
