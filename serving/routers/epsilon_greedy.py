"""ε-greedy: the branch with the best mean reward so far, except for a fraction ε of requests.

As Seldon's ``EpsilonGreedy`` router: with probability 1 - ε the best branch, otherwise one of
the *other* branches, uniformly (so ε is exactly the share of exploration). Unlike it, a branch
without a reward yet counts as the best (each branch is tried before any is preferred, where
Seldon starts from a random one), ties are broken at random, and the mean is of the rewards
themselves, not of ``int(reward * rows)`` successes.
"""

from __future__ import annotations

import numpy as np

from serving.routers.bandit import Router


class EpsilonGreedy(Router):
    algorithm = "epsilon-greedy"

    def __init__(self, n_branches: int = 2, epsilon: float = 0.1, **kwargs):
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)
        super().__init__(n_branches=n_branches, **kwargs)

    def best(self) -> int:
        values = np.where(self.n > 0, self.total / np.maximum(self.n, 1), np.inf)
        top = np.flatnonzero(values == values.max())
        return int(top[0] if len(top) == 1 else self.rng.choice(top))

    def choose(self) -> int:
        best = self.best()
        if self.n_branches == 1 or self.rng.random() >= self.epsilon:
            return best
        other = int(self.rng.integers(self.n_branches - 1))
        return other + (other >= best)  # uniform over the branches that are not the best
