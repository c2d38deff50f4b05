"""Simulated experiments drawn from real per-request rewards, for the benchmark and the tests.

Each simulated request is a hold-out row drawn at random (with replacement) and an arm drawn
at random by the traffic weight; its reward is what that arm's model earns on that row, and its
covariates are the row's (functions of the features only). So an A/B simulation has exactly the
effect seen between the arms on the hold-out, and an A/A simulation (both arms the same rewards)
has none. Everything is vectorised: one row of the arrays is one experiment, one column one request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from experiment.msprt import DECISION_CODES, Design, first_stop, log_evidence
from experiment.running import Running, running_difference


@dataclass(frozen=True)
class Draws:
    y: np.ndarray  # rewards, (experiments, requests)
    treated: np.ndarray  # True where the treatment served
    x_control: np.ndarray | None  # the control's covariate of each request's row
    x_treatment: np.ndarray | None


def draw(
    rng: np.random.Generator,
    rewards_control,
    rewards_treatment,
    experiments: int,
    requests: int,
    covariate_control=None,
    covariate_treatment=None,
    weight: float = 0.5,
) -> Draws:
    """``experiments`` × ``requests`` requests: a random row each, treatment with probability ``weight``."""
    rc, rt = np.asarray(rewards_control, dtype="float64"), np.asarray(rewards_treatment, dtype="float64")
    if rc.shape != rt.shape or rc.ndim != 1:
        raise ValueError("both arms need one reward per row, on the same rows")
    rows = rng.integers(0, len(rc), size=(experiments, requests))
    treated = rng.random((experiments, requests)) < weight
    y = np.where(treated, rt[rows], rc[rows])
    if covariate_control is None:
        return Draws(y, treated, None, None)
    xc = np.asarray(covariate_control, dtype="float64")[rows]
    xt = np.asarray(covariate_treatment if covariate_treatment is not None else covariate_control)[rows]
    return Draws(y, treated, xc, xt)


def _per_arm_at(running: Running, index: np.ndarray) -> np.ndarray:
    """Requests per arm (the mean of the two arms' counts) at each experiment's stopping look."""
    rows = np.arange(len(index))
    total = np.atleast_2d(running.n_control) + np.atleast_2d(running.n_treatment)
    last = total.shape[-1] - 1
    return total[rows, np.where(index >= 0, index, last)] / 2


def sequential(draws: Draws, design: Design, adjusted: bool = False, futility: bool | None = None):
    """(requests per arm at the stop, decision code) of each experiment under the sequential test."""
    x = (draws.x_control, draws.x_treatment) if adjusted else (None, None)
    running = running_difference(draws.y, draws.treated, *x)
    index, code = first_stop(
        running, log_evidence(running.difference, running.variance, design), design, futility
    )
    return _per_arm_at(running, index), code


def welch_p(running: Running, y, treated):
    """Welch's two-sided p-value at every look (the test a dashboard re-runs on each refresh)."""
    t = running.difference / np.sqrt(running.variance)
    # Welch-Satterthwaite degrees of freedom from the per-arm variance terms
    n_c, n_t = running.n_control, running.n_treatment
    m = np.asarray(treated, dtype=bool)
    yy = np.asarray(y, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_t = np.cumsum(m * yy, axis=-1) / n_t
        var_t = (np.cumsum(m * yy * yy, axis=-1) - n_t * mean_t**2) / (n_t - 1)
        vt = var_t / n_t
        vc = running.variance - vt
        df = running.variance**2 / (vt**2 / (n_t - 1) + vc**2 / (n_c - 1))
    return 2 * stats.t.sf(np.abs(t), df)


def naive_peeking(draws: Draws, alpha: float, min_n: int, n_max: int) -> np.ndarray:
    """Per experiment: did a Welch test re-run at every look (``min_n``..``n_max`` per arm) ever reject?"""
    running = running_difference(draws.y, draws.treated)
    p = welch_p(running, draws.y, draws.treated)
    n = np.minimum(running.n_control, running.n_treatment)
    looking = (n >= min_n) & (n <= n_max)
    return ((p < alpha) & looking).any(axis=-1)


def fixed_horizon(draws: Draws, n: int, alpha: float) -> np.ndarray:
    """Per experiment: decision code of one Welch test read once, after ``2n`` requests.

    That is ``n`` requests per arm on average, counted the way the sequential test's requests are
    (total / 2); the split of those 2n requests between the arms is random, as in a real 50/50 test.
    """
    if draws.y.shape[-1] < 2 * n:
        raise ValueError(f"the simulated experiments have fewer than {2 * n} requests: draw more")
    running = running_difference(draws.y[..., : 2 * n], draws.treated[..., : 2 * n])
    p = welch_p(running, draws.y[..., : 2 * n], draws.treated[..., : 2 * n])[..., -1]
    won = running.difference[..., -1] > 0
    return np.where(
        p < alpha,
        np.where(won, DECISION_CODES["winner"], DECISION_CODES["harm"]),
        DECISION_CODES["planned n"],
    )
