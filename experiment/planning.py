"""The sample size, planned before any traffic, from the arms' offline metrics on a validation split.

The hold-out rows are the experiment's traffic, so the plan must not look at them. It uses the
training rows only: each arm's model (training/arms.py) is cross-validated on them (k-fold
out-of-fold predictions, each row predicted by a model that did not learn from it), which gives
every training row a reward per arm as the experiment would measure it. The difference of the
arms' mean validation rewards is the planned minimum effect; with the arms' standard deviations
it gives the fixed-horizon Welch n at the target power (``experiment.stats.required_n``) and the
sequential test's design: the same effect, β = 1 - power for Wald's futility boundary, and a
planned maximum of ``cap`` times the fixed-horizon n where the monitored experiment stops at the
latest (the always-valid boundary is wider than a one-look test's, so the cap sits above it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import ElasticNet
from sklearn.model_selection import KFold, cross_val_predict

from experiment.msprt import MIN_N, Design
from experiment.stats import required_n

FOLDS = 5
CAP = 2.0  # the sequential test's planned maximum, in fixed-horizon n


def elastic_net(params: Mapping, seed: int):
    """An arm's model as training/train.py builds it."""
    return ElasticNet(alpha=params["alpha"], l1_ratio=params["l1_ratio"], random_state=seed)


def validation_rewards(
    train: pd.DataFrame,
    arms: Mapping[str, Mapping],
    features: list[str],
    target: str,
    folds: int = FOLDS,
    seed: int = 0,
    model: Callable = elastic_net,
    reward: Callable | None = None,
) -> pd.DataFrame:
    """Per training row and arm: the reward of the arm's out-of-fold prediction (k-fold cross-validation)."""
    if reward is None:
        from feedback import reward  # the one reward definition
    splitter = KFold(folds, shuffle=True, random_state=seed)
    truth = train[target].to_numpy(dtype="float64")
    score = np.vectorize(reward, otypes=["float64"])
    return pd.DataFrame(
        {
            arm: score(truth, cross_val_predict(model(params, seed), train[features], truth, cv=splitter))
            for arm, params in arms.items()
        },
        index=train.index,
    )


@dataclass(frozen=True)
class Plan:
    control: str
    treatment: str
    mean: dict[str, float]  # validation mean reward per arm
    sd: dict[str, float]
    mde: float  # |treatment - control| on the validation split
    alpha: float
    power: float
    n_fixed: int  # per arm, Welch at `power`
    design: Design  # the sequential test
    source: str = "validation split"

    @property
    def expected_winner(self) -> str:
        return self.treatment if self.mean[self.treatment] > self.mean[self.control] else self.control

    @property
    def sentence(self) -> str:
        return (
            f"planned before traffic from the {self.source}: mean reward {self.control} "
            f"{self.mean[self.control]:.3f}, {self.treatment} {self.mean[self.treatment]:.3f} "
            f"(difference {self.mde:.4f}); a one-look Welch test needs {self.n_fixed:,} requests per arm "
            f"for {self.power:.0%} power at α = {self.alpha:g}; the sequential test looks after every "
            f"request and stops at {self.design.n_max:,} per arm at the latest"
        )

    def record(self) -> dict:
        return {
            "source": self.source,
            "mean": self.mean,
            "sd": self.sd,
            "mde": self.mde,
            "alpha": self.alpha,
            "power": self.power,
            "n_fixed": self.n_fixed,
            "design": self.design.as_dict(),
        }

    def __str__(self) -> str:
        return self.sentence


def plan(
    rewards: pd.DataFrame,
    control: str,
    treatment: str,
    alpha: float = 0.05,
    power: float = 0.8,
    cap: float = CAP,
    min_n: int = MIN_N,
    source: str = "validation split",
) -> Plan:
    """The plan from per-row validation rewards (``validation_rewards``): one-look n and sequential design."""
    missing = [a for a in (control, treatment) if a not in rewards.columns]
    if missing:
        raise ValueError(f"no validation rewards for {missing} (have {list(rewards.columns)})")
    mean = {a: float(rewards[a].mean()) for a in (control, treatment)}
    sd = {a: float(rewards[a].std(ddof=1)) for a in (control, treatment)}
    mde = abs(mean[treatment] - mean[control])
    n_fixed = required_n(mde, sd[control], sd[treatment], alpha, power)
    if not math.isfinite(n_fixed):
        raise ValueError("the arms do equally well on the validation split: no sample size can separate them")
    design = Design(
        mde=mde,
        n_max=max(min_n, math.ceil(cap * n_fixed)),
        sd=float(np.sqrt((sd[control] ** 2 + sd[treatment] ** 2) / 2)),
        alpha=alpha,
        beta=round(1 - power, 12),
        min_n=min_n,
    )
    return Plan(control, treatment, mean, sd, mde, alpha, power, int(n_fixed), design, source)
