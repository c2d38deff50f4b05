"""Thompson sampling for rewards in [0, 1]: draw each branch's mean from its posterior, route to the largest.

Three posteriors (parameter ``posterior``):

- ``student-t`` (the default): the normal model with unknown mean and variance under the uniform
  prior, the prior with which Thompson sampling is asymptotically optimal for Gaussian rewards
  (Honda & Takemura 2014, "Optimality of Thompson sampling for Gaussian bandits depends on
  priors", AISTATS: optimal for priors (sigma^2)^(-1-alpha) with alpha < 0, the uniform one is
  alpha = -1; not for the reference or the Jeffreys prior). After n rewards with mean m and sum of
  squared deviations S, the branch's mean is m + t * sqrt(S / (n (n - 3))), t a Student-t with
  n - 3 degrees of freedom. So each branch first gets ``MIN_REWARDS`` = 4 rewards (the posterior
  is improper before), and its draws have heavy tails while it has few. One change: S gets
  ``SQUARES_FLOOR`` = 0.25 added, one observation's worth of the largest variance a [0, 1] reward
  can have, so first rewards that happen to be alike (0/1 rewards can be exactly alike) cannot
  collapse the spread; against the wine rewards' S of about 0.05 per reward it fades within tens.
- ``gaussian`` (the default until it was measured to get stuck): the mean drawn from a normal
  centred on the mean reward, with the standard error the rewards show, pooled with one prior
  observation of 0.5 with variance 0.25. A few unlucky early rewards give the better branch a low
  mean *and* a small plug-in variance: its posterior is confidently wrong and it is almost never
  drawn again. Gaussian Thompson sampling with a plug-in variance has no exploration guarantee.
- ``beta``: the Beta-Bernoulli trick (Agrawal & Goyal 2012): each reward r becomes a Bernoulli
  draw with p = r, counted in a Beta(1, 1) posterior. Exact for any [0, 1] rewards, but it learns
  as if every reward were a coin flip (variance p(1 - p), the largest with that mean), so slowly:
  the wine rewards' variance is 0.05, a coin's with their mean 0.15.

Measured on the wine hold-out (1,960 rows, both arms' rewards known for every row: the
in-process runs of experiment/bandits.py, ``python -m bench.bandit``, bench/results-bandit.json).
A run is stuck when it sends less than half of its second half to the better arm. Over 200
shuffles of the rows:

    posterior   2nd half to better arm   stuck runs   runs < 80%   regret: mean   worst 10% (mean)   max
    student-t         96.6%                 0.0%          0.5%          7.3            17.6           32.6
    gaussian          96.5%                 0.5%          0.5%          7.1            23.4           84.0
    beta              90.6%                 2.0%         13.5%         13.7            44.9           81.2

and on the hold-out's own order (the live replay's) over 200 router seeds; the bandits.ipynb run
that prompted the change was a stuck draw of the gaussian (regret 55, the A/B test's 41):

    student-t         97.4%                 0.0%          1.0%          5.6            14.5           36.2
    gaussian          95.6%                 2.0%          2.5%          7.6            37.1           84.1
    beta              88.9%                 6.0%         15.0%         14.3            58.7           84.5

The student-t costs nothing on the average, removes the stuck runs and halves the worst decile
on the replay's order, so it is the default. Its limit: heavy tails shrink as rewards come in (2
degrees of freedom after 5 rewards, 7 after 10), so a better arm whose first ten rewards all come
from its low tail can still wait thousands of requests (tests/serving/test_routers.py has both
cases). Also tried: non-parametric Thompson sampling (Riou & Honda 2020, optimal for bounded
rewards: a Dirichlet over the rewards rounded onto a grid plus one pseudo-reward of 1): 0.5%
stuck on the replay's order, worst decile 24.6. A route costs 17 us in process (gaussian 15,
beta 33): the posterior is computed once per reward, and one Student-t draw per branch.

**Feedback that never comes.** The first ``MIN_REWARDS`` requests of each branch are routed in
turn (fewest routed first); a branch that has been routed ``MIN_REWARDS + UNANSWERED`` times and
still has fewer rewards (its feedback is not coming: a failing child, a caller that sends none)
is left out, and with no branch left the choice is uniform: it never takes all the traffic.

Either way a feedback is one observation (see ``serving.routers.bandit``), where Seldon's
``ThompsonSampling`` router adds ``int(reward * rows)`` successes: with one-row requests any
reward below 1 is a failure.
"""

from __future__ import annotations

import numpy as np

from serving.routers.bandit import Router

PRIOR_MEAN, PRIOR_VARIANCE, PRIOR_COUNT = 0.5, 0.25, 1.0  # the gaussian posterior's prior observation
POSTERIORS = ("student-t", "gaussian", "beta")
MIN_REWARDS = 4  # student-t: rewards before its posterior is proper (n - 3 degrees of freedom)
SQUARES_FLOOR = PRIOR_COUNT * PRIOR_VARIANCE  # student-t: added to the sum of squared deviations
UNANSWERED = 100  # student-t: routes without a reward after which a new branch is not waited for
# the gaussian and student-t posteriors need the same sums: either's state file loads into the other
SAME_STATE = {"thompson-student-t", "thompson-gaussian"}


class ThompsonSampling(Router):
    def __init__(self, n_branches: int = 2, posterior: str = "student-t", **kwargs):
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        self.posterior = posterior
        self.successes = np.zeros(int(n_branches))  # the Beta-Bernoulli trick's counts
        self._parameters = None  # the posterior's, recomputed only after a reward (see sample)
        super().__init__(n_branches=n_branches, **kwargs)

    # the state file's algorithm names the posterior: a gaussian state must not load as beta
    @property
    def algorithm(self) -> str:
        return f"thompson-{self.posterior}"

    @property
    def loads(self) -> set[str]:
        return SAME_STATE if self.algorithm in SAME_STATE else {self.algorithm}

    def learned(self, branch: int, reward: float) -> None:
        if self.posterior == "beta":
            self.successes[branch] += self.rng.random() < reward
        self._parameters = None

    def parameters(self) -> tuple[np.ndarray, ...]:
        """Each branch's posterior: Beta (a, b); the normal's (mean, standard deviation); or the
        Student-t's (location, scale, degrees of freedom), location -inf for a branch without
        ``MIN_REWARDS`` rewards (never drawn: ``choose`` routes to it in turn or leaves it out)."""
        if self.posterior == "beta":
            return 1.0 + self.successes, 1.0 + self.n - self.successes
        if self.posterior == "student-t":
            n = np.maximum(self.n, MIN_REWARDS).astype(float)
            squares = np.maximum(self.total_sq - self.total**2 / n, 0.0) + SQUARES_FLOOR
            ready = self.n >= MIN_REWARDS
            return np.where(ready, self.total / n, -np.inf), np.sqrt(squares / (n * (n - 3))), n - 3
        count = PRIOR_COUNT + self.n
        mean = (PRIOR_COUNT * PRIOR_MEAN + self.total) / count
        # pooled with the prior: never 0, however alike the first rewards are
        squares = self.total_sq - self.total**2 / np.maximum(self.n, 1)
        variance = (PRIOR_COUNT * PRIOR_VARIANCE + np.maximum(squares, 0.0)) / count
        return mean, np.sqrt(variance / count)

    def sample(self) -> np.ndarray:
        # the posterior changes only with a reward: computed once per feedback, not per route call
        # (the ~8 numpy operations cost 20 us of a route's 30 us in process); the draws are the same
        if self._parameters is None:
            self._parameters = self.parameters()
        if self.posterior == "student-t":
            location, scale, df = self._parameters
            return location + scale * self.rng.standard_t(df)
        a, b = self._parameters
        return self.rng.beta(a, b) if self.posterior == "beta" else self.rng.normal(a, b)

    def choose(self) -> int:
        if self.posterior == "student-t" and (self.n < MIN_REWARDS).any():
            waiting = (self.n < MIN_REWARDS) & (self.routed < MIN_REWARDS + UNANSWERED)
            if waiting.any():  # in turn: the fewest routed first, ties at random
                routed = np.where(waiting, self.routed, np.iinfo(np.int64).max)
                return int(self.rng.choice(np.flatnonzero(routed == routed.min())))
            if (self.n < MIN_REWARDS).all():  # no feedback comes at all: split evenly
                return int(self.rng.integers(self.n_branches))
        return int(np.argmax(self.sample()))

    def state(self) -> dict:
        return {**super().state(), "successes": self.successes.tolist()}

    def load_state(self, path) -> dict:
        state = super().load_state(path)
        self.successes[:] = state.get("successes", 0.0)
        self._parameters = None
        return state
