"""Thompson sampling for rewards in [0, 1]: draw each branch's mean from its posterior, route to the largest.

Two posteriors (parameter ``posterior``):

- ``gaussian`` (the default): each branch's mean reward is drawn from a normal distribution
  centred on its mean reward, with the standard error its rewards show. One prior observation of
  0.5 with variance 0.25 (the largest a [0, 1] variable can have) keeps an untried branch wide
  open and a branch with one reward from looking certain. The spread is the rewards' own, which
  is the point: the project's reward ``exp(-error^2 / 2)`` varies far less than a coin with the
  same mean, so this posterior narrows with fewer requests.
- ``beta``: the Beta-Bernoulli trick (Agrawal & Goyal 2012): each reward r becomes a Bernoulli
  draw with p = r, counted as a success or a failure in a Beta(1, 1) posterior. Exact Thompson
  sampling for any rewards in [0, 1] with no variance to estimate, but it learns as if every
  reward were a coin flip, whose variance p(1 - p) is the largest a [0, 1] reward with that mean
  can have. bench/bandit.py runs both on the same replay.

Either way a feedback is one observation (see ``serving.routers.bandit``), where Seldon's
``ThompsonSampling`` router adds ``int(reward * rows)`` successes: with one-row requests any
reward below 1 is a failure.
"""

from __future__ import annotations

import numpy as np

from serving.routers.bandit import Router

PRIOR_MEAN, PRIOR_VARIANCE, PRIOR_COUNT = 0.5, 0.25, 1.0
POSTERIORS = ("gaussian", "beta")


class ThompsonSampling(Router):
    def __init__(self, n_branches: int = 2, posterior: str = "gaussian", **kwargs):
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

    def learned(self, branch: int, reward: float) -> None:
        if self.posterior == "beta":
            self.successes[branch] += self.rng.random() < reward
        self._parameters = None

    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """Each branch's posterior: Beta (a, b), or the normal's (mean, standard deviation)."""
        if self.posterior == "beta":
            return 1.0 + self.successes, 1.0 + self.n - self.successes
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
        a, b = self._parameters
        return self.rng.beta(a, b) if self.posterior == "beta" else self.rng.normal(a, b)

    def choose(self) -> int:
        return int(np.argmax(self.sample()))

    def state(self) -> dict:
        return {**super().state(), "successes": self.successes.tolist()}

    def load_state(self, path) -> dict:
        state = super().load_state(path)
        self.successes[:] = state["successes"]
        self._parameters = None
        return state
