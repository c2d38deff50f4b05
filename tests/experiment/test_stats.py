"""experiment.stats: interval coverage and the sample size, measured on samples of real error populations."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from experiment.stats import arm_stats, required_n
from tests.experiment.conftest import rewards_of, synthetic_log


def test_intervals_cover_the_true_mean_reward_and_rmse(populations):
    """t-interval for the mean reward, BCa bootstrap for the RMSE: ~95% coverage on real errors."""
    population = populations["model-a"]
    true_reward, true_rmse = rewards_of(population).mean(), np.sqrt(np.mean(population**2))
    rng = np.random.default_rng(7)
    runs, n = 300, 300
    covered = {"reward": 0, "rmse": 0}
    for i in range(runs):
        s = arm_stats(synthetic_log({"x": rng.choice(population, n)}), resamples=1000, seed=i)["x"]
        covered["reward"] += s.reward_ci[0] <= true_reward <= s.reward_ci[1]
        covered["rmse"] += s.rmse_ci[0] <= true_rmse <= s.rmse_ci[1]
    # binomial sd of the coverage over 300 runs is 1.3 points
    assert 0.91 <= covered["reward"] / runs <= 0.985, covered
    assert 0.90 <= covered["rmse"] / runs <= 0.985, covered


def test_required_n_matches_the_textbook_and_gives_the_promised_power(populations):
    # Cohen's table / G*Power: two-sided alpha 0.05, power 0.8, d = 0.2, 0.5, 0.8 -> 394, 64, 26 per group
    assert [required_n(d, 1.0, 1.0) for d in (0.2, 0.5, 0.8)] == [394, 64, 26]
    assert required_n(0.0, 1.0, 1.0) == math.inf

    a, worse = rewards_of(populations["model-a"]), rewards_of(populations["model-worse"])
    n = int(required_n(a.mean() - worse.mean(), a.std(), worse.std()))
    rng = np.random.default_rng(11)
    trials = 1000
    x, y = rng.choice(a, (trials, n)), rng.choice(worse, (trials, n))
    rejected = stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < 0.05
    assert 0.76 <= rejected.mean() <= 0.84, (n, rejected.mean())  # 0.80 +- 3 binomial sd
