"""The always-valid sequential test against the formulas of its papers, and its decisions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiment import sequential as seq


def test_normal_mixture_matches_johari_et_al():
    # Johari, Pekelis, Walsh (2017): Λn = √(2σ²/(2σ²+nτ²)) exp(n²τ²(Δ-θ0)² / (4σ²(2σ²+nτ²))), n per arm
    sigma, tau, n, delta, theta0 = 0.23, 0.05, 400, 0.031, 0.004
    paper = math.sqrt(2 * sigma**2 / (2 * sigma**2 + n * tau**2)) * math.exp(
        n**2 * tau**2 * (delta - theta0) ** 2 / (4 * sigma**2 * (2 * sigma**2 + n * tau**2))
    )
    ours = seq.log_evidence_normal(delta, 2 * sigma**2 / n, tau**2, theta0)
    assert float(np.exp(ours)) == pytest.approx(paper, rel=1e-12)


def test_normal_mixture_is_the_integral_of_the_likelihood_ratio():
    d, v, tau2 = 0.02, 3e-4, 0.03**2
    ratio = lambda th: stats.norm.pdf(d, th, math.sqrt(v)) / stats.norm.pdf(d, 0, math.sqrt(v))  # noqa: E731
    integral = stats.norm.expect(ratio, loc=0, scale=math.sqrt(tau2))
    assert float(np.exp(seq.log_evidence_normal(d, v, tau2))) == pytest.approx(integral, rel=1e-6)


def test_two_point_mixture_is_the_average_of_two_likelihood_ratios():
    d, v, delta = -0.013, 2.5e-4, 0.04
    lr = lambda th: stats.norm.pdf(d, th, math.sqrt(v)) / stats.norm.pdf(d, 0, math.sqrt(v))  # noqa: E731
    expected = 0.5 * (lr(delta) + lr(-delta))
    assert float(np.exp(seq.log_evidence_two_point(d, v, delta))) == pytest.approx(expected, rel=1e-10)
    # large statistics stay finite (log cosh computed stably)
    assert np.isfinite(seq.log_evidence_two_point(5.0, 1e-6, 0.04))


def test_confidence_sequence_matches_waudby_smith_margin_and_inverts_the_msprt():
    # Waudby-Smith et al. (2021), unit variance, time t: sqrt(2(tρ²+1)/(t²ρ²) · log(sqrt(tρ²+1)/α))
    t, rho2, alpha = 500, 0.01, 0.05
    margin = math.sqrt(2 * (t * rho2 + 1) / (t**2 * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha))
    low, high = seq.confidence_sequence(0.0, 1 / t, alpha, rho2)
    assert float(high) == pytest.approx(margin, rel=1e-12) and float(low) == pytest.approx(-margin, rel=1e-12)
    # the interval's ends are exactly where the normal-mixture mSPRT's Λ(θ0) reaches 1/α
    d, v, tau2 = 0.03, 2e-4, 1e-3
    low, high = seq.confidence_sequence(d, v, alpha, tau2)
    for end in (low, high):
        assert float(seq.log_evidence_normal(d, v, tau2, theta0=float(end))) == pytest.approx(
            math.log(1 / alpha)
        )


def test_two_point_interval_inverts_its_test():
    d, v, delta, alpha = 0.05, 3e-4, 0.04, 0.05
    low, high = seq.confidence_sequence_two_point(d, v, alpha, delta)
    for end in (low, high):
        assert float(seq.log_evidence_two_point(d, v, delta, theta0=float(end))) == pytest.approx(
            math.log(1 / alpha)
        )
    # tiny variances: finite, and never narrower than ±δ/2
    low, high = seq.confidence_sequence_two_point(d, 1e-9, alpha, delta)
    assert np.isfinite(high) and high - d >= delta / 2


def test_cs_tau2_is_the_approximate_optimum():
    # best_rho2_approx (Waudby-Smith et al.): ρ² = (-2 log α + log(-2 log α + 1)) / t*, here V* = 1/t*
    t_opt, alpha = 1000, 0.05
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / t_opt
    assert seq.cs_tau2(1 / t_opt, alpha) == pytest.approx(rho2)
    widths = {r: seq.confidence_sequence(0.0, 1 / t_opt, alpha, r)[1] for r in (rho2 / 3, rho2, rho2 * 3)}
    assert widths[rho2] < widths[rho2 / 3] and widths[rho2] < widths[rho2 * 3]


def test_always_valid_p_is_the_running_minimum_of_one_over_lambda():
    log_e = np.log([0.5, 2.0, 1.5, 25.0, 3.0])
    assert seq.always_valid_p(log_e) == pytest.approx([1.0, 0.5, 0.5, 0.04, 0.04])


def test_running_difference_matches_direct_estimates():
    rng = np.random.default_rng(3)
    y = rng.random(300)
    treated = rng.random(300) < 0.5
    run = seq.running_difference(y, treated)
    yt, yc = y[treated], y[~treated]
    assert run.difference[-1] == pytest.approx(yt.mean() - yc.mean())
    assert run.variance[-1] == pytest.approx(yt.var(ddof=1) / len(yt) + yc.var(ddof=1) / len(yc))
    k = 57  # any prefix is the estimate of that look
    assert run.difference[k] == pytest.approx(
        y[: k + 1][treated[: k + 1]].mean() - y[: k + 1][~treated[: k + 1]].mean()
    )


def test_regression_adjustment_matches_lins_estimator():
    rng = np.random.default_rng(4)
    n = 2000
    x_c, x_t = rng.normal(size=n), rng.normal(size=n)
    treated = rng.random(n) < 0.5
    y = np.where(treated, 0.3 + 0.8 * x_t, 0.5 * x_c) + rng.normal(scale=0.5, size=n)
    run = seq.running_difference(y, treated, x_c, x_t)
    # per arm: OLS of y on its own covariate, predicted at the covariate's mean over all requests
    fitted = {}
    for arm, x in ((True, x_t), (False, x_c)):
        slope, intercept = np.polyfit(x[treated == arm], y[treated == arm], 1)
        fitted[arm] = intercept + slope * x.mean()
    assert run.difference[-1] == pytest.approx(fitted[True] - fitted[False], rel=1e-9)
    raw = seq.running_difference(y, treated)
    # Lin's asymptotic variance: residual variance per arm, plus Var(0.8 x_t - 0.5 x_c) / N
    n_t, n_c = treated.sum(), (~treated).sum()
    assert run.variance[-1] == pytest.approx(0.25 / n_t + 0.25 / n_c + (0.64 + 0.25) / n, rel=0.1)
    assert run.variance[-1] < 0.8 * raw.variance[-1]
    # an uninformative covariate changes (almost) nothing
    noise = seq.running_difference(y, treated, rng.normal(size=n), rng.normal(size=n))
    assert noise.variance[-1] == pytest.approx(raw.variance[-1], rel=0.02)


def test_first_stop_decisions():
    design = seq.Design(mde=0.1, n_max=50, min_n=5)
    n = np.arange(1, 121) / 2
    run = seq.Running(n, n, np.full(120, 0.2), np.full(120, 1e-3))
    log_e = np.stack([np.full(120, 0.0), np.linspace(0, 4, 120), np.linspace(0, -4, 120)])
    runs = seq.Running(
        *(np.broadcast_to(a, (3, 120)) for a in (run.n_control, run.n_treatment)),
        run.difference,
        run.variance,
    )
    index, code = seq.first_stop(runs, log_e, design)
    names = [seq.CODE_DECISIONS[c] for c in code]
    assert names == [seq.PLANNED_N, seq.WINNER, seq.FUTILITY]
    assert index[0] == 99  # both arms reach 50 requests at the 100th request
    assert log_e[1, index[1]] >= design.upper and log_e[1, index[1] - 1] < design.upper
    # no look before min_n requests per arm, even with overwhelming evidence
    index, _ = seq.first_stop(runs, np.full((3, 120), 10.0), design)
    assert (index == 9).all()


def _log(rng, n, effect):
    arm = np.where(rng.random(n) < 0.5, "b", "a")
    reward = np.clip(rng.normal(0.7, 0.2, n) + np.where(arm == "b", effect, 0.0), 0, 1)
    return pd.DataFrame({"request_id": np.arange(1000, 1000 + n), "arm": arm, "reward": reward})


def test_monitor_stops_for_a_winner_and_says_where():
    rng = np.random.default_rng(5)
    log = _log(rng, 3000, 0.08)
    # without the futility stop: a run of bad luck early on may (rightly, 1 time in 5 or less) give up
    design = seq.Design(mde=0.05, n_max=1500, sd=0.2, futility=False)
    result = seq.monitor(log, "a", "b", design)
    assert result.decision == seq.WINNER and result.winner == "b"
    assert result.look < 3000 and result.request_id == 1000 + result.look - 1
    assert result.interval[0] > 0  # the always-valid interval excludes 0 too
    assert result.p_value <= design.alpha
    assert set(result.record()) >= {"test", "n", "difference", "interval", "p_value", "e_value", "design"}
    assert "winner at request" in result.sentence


def test_monitor_harm_futility_and_continue():
    rng = np.random.default_rng(6)
    design = seq.Design(mde=0.05, n_max=2000, sd=0.2)
    assert seq.monitor(_log(rng, 4000, -0.08), "a", "b", design).decision == seq.HARM
    assert seq.monitor(_log(rng, 4000, 0.0), "a", "b", design).decision == seq.FUTILITY
    short = seq.monitor(_log(rng, 30, 0.0), "a", "b", design)
    assert short.decision == seq.CONTINUE and short.look is None


def test_monitor_rejects_bad_input():
    log = _log(np.random.default_rng(7), 100, 0.0)
    design = seq.Design(mde=0.05, n_max=100)
    with pytest.raises(ValueError, match="no served rows"):
        seq.monitor(log, "a", "c", design)
    with pytest.raises(ValueError, match="covariate"):
        seq.monitor(log, "a", "b", design, covariates=("x_a", "x_b"))
    with pytest.raises(ValueError, match="positive"):
        seq.Design(mde=0.0, n_max=100)


@pytest.mark.parametrize("adjusted", [False, True])
def test_streaming_monitor_agrees_with_the_whole_log(adjusted):
    rng = np.random.default_rng(8)
    log = _log(rng, 3000, 0.05)
    log["x_a"] = log["reward"] * 0.5 + rng.normal(0, 0.1, len(log))  # any per-request numbers will do here
    log["x_b"] = rng.normal(0, 0.1, len(log))
    design = seq.Design(mde=0.04, n_max=1200, sd=0.2)
    covariates = ("x_a", "x_b") if adjusted else None
    whole = seq.monitor(log, "a", "b", design, covariates)
    stream = seq.Monitor(design, "a", "b", adjusted=adjusted)
    for row in log.itertuples():
        x = (row.x_a, row.x_b) if adjusted else (None, None)
        if stream.add(row.arm, row.reward, *x) != seq.CONTINUE:
            break
    assert stream.decision == whole.decision != seq.CONTINUE
    assert stream.stopped_at == whole.look
    assert stream.last["difference"] == pytest.approx(whole.difference)
    assert stream.last["interval"] == pytest.approx(whole.interval)
    assert stream.add("b", 1.0) == stream.decision  # it stays stopped
