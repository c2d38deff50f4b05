"""The difference in mean reward after every request, and its variance, raw or CUPED-adjusted.

Running sums over the requests in order give, at every look, each arm's count and mean and the
difference treatment - control with its plug-in variance V = s_t²/n_t + s_c²/n_c, which the mSPRT
(experiment/msprt.py) is applied to. With covariates computed from the request's features before
assignment (experiment/cuped.py), each arm's mean is regression-adjusted (``running_difference``).
``running_difference`` does it for whole arrays at once (one simulated experiment per row);
``RunningSums`` one request at a time, for a replay that stops when the test decides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


class RunningSums:
    """The same running sums fed one request at a time: ``add`` costs O(1) and returns the estimate."""

    def __init__(self, adjusted: bool = False):
        self.adjusted = adjusted
        self.sums: dict[str, np.float64] = {}

    def add(
        self, treated: bool, reward: float, x_control: float | None = None, x_treatment: float | None = None
    ) -> Running:
        if self.adjusted and (x_control is None or x_treatment is None):
            raise ValueError("an adjusted monitor needs both covariates of every request")
        x = (
            (np.array([x_control], dtype="float64"), np.array([x_treatment], dtype="float64"))
            if self.adjusted
            else ()
        )
        for key, value in _terms(np.array([float(reward)]), np.array([treated]), *x).items():
            # numpy scalars: x/0 is inf, not an error
            self.sums[key] = self.sums.get(key, np.float64(0.0)) + value[0]
        return _estimate(self.sums)
