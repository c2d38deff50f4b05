"""Simulation checks of the sequential test, small enough to be quick (the benchmark runs 2,000 of each)."""

from __future__ import annotations

import numpy as np
import pytest

from experiment import sequential as seq
from experiment import simulate
from experiment.stats import required_n


@pytest.fixture(scope="module")
def rewards():
    # a skewed, bounded reward like the project's: exp(-e²/2) of normal errors
    rng = np.random.default_rng(0)
    return np.exp(-(rng.normal(0, 0.9, 3000) ** 2) / 2)


def test_peeking_at_welch_inflates_false_positives_and_the_sequential_test_does_not(rewards):
    rng = np.random.default_rng(1)
    design = seq.Design(mde=0.05, n_max=300, min_n=30, futility=False)
    draws = simulate.draw(rng, rewards, rewards, 400, 700)
    _, code = simulate.sequential(draws, design)
    sequential_fpr = np.isin(code, [1, -1]).mean()
    naive_fpr = simulate.naive_peeking(draws, design.alpha, design.min_n, design.n_max).mean()
    # 400 experiments: standard error ~1.1 points at 5%
    assert sequential_fpr <= 0.05 + 3 * 0.011
    assert naive_fpr > 2 * 0.05 and naive_fpr > sequential_fpr + 0.08


def test_sequential_stops_earlier_than_the_fixed_horizon_under_an_effect(rewards):
    rng = np.random.default_rng(2)
    better = np.clip(rewards + 0.07, 0, 1)
    effect = better.mean() - rewards.mean()
    n_fixed = int(required_n(effect, rewards.std(), better.std()))
    design = seq.Design(mde=effect, n_max=2 * n_fixed, min_n=30)
    draws = simulate.draw(rng, rewards, better, 300, 5 * n_fixed)
    n, code = simulate.sequential(draws, design)
    fixed = simulate.fixed_horizon(draws, n_fixed, design.alpha)
    # 300 experiments: standard error ~2.3 points at 80%
    assert (fixed == seq.DECISION_CODES[seq.WINNER]).mean() > 0.8 - 3 * 0.023
    assert (code == seq.DECISION_CODES[seq.WINNER]).mean() > 0.8 - 3 * 0.023
    assert n.mean() < 0.85 * n_fixed


def test_draws_use_the_same_rows_for_rewards_and_covariates():
    rng = np.random.default_rng(3)
    r = np.arange(10.0)
    d = simulate.draw(rng, r, r + 100, 5, 50, r * 2, r * 3)
    control = ~d.treated
    assert np.allclose(d.x_control[control], d.y[control] * 2)
    assert np.allclose(d.x_treatment[~control], (d.y[~control] - 100) * 3)
    with pytest.raises(ValueError, match="same rows"):
        simulate.draw(rng, r, r[:5], 2, 10)
