"""The plan comes from the training rows' cross-validation, never from the hold-out."""

from __future__ import annotations

import pandas as pd
import pytest

from experiment import planning
from experiment.stats import required_n
from training.arms import ARMS
from training.data import FEATURES, TARGET, load_wine_quality, split_holdout


def test_plan_from_a_validation_split():
    train, holdout = split_holdout(load_wine_quality())
    rewards = planning.validation_rewards(train, ARMS, FEATURES, TARGET)
    assert list(rewards.index) == list(train.index) and not set(rewards.index) & set(holdout.index)
    assert list(rewards.columns) == list(ARMS)
    plan = planning.plan(rewards, control="b", treatment="a")
    assert plan.mde == pytest.approx(abs(rewards["a"].mean() - rewards["b"].mean()))
    assert plan.n_fixed == required_n(plan.mde, rewards["b"].std(), rewards["a"].std())
    assert plan.design.n_max == pytest.approx(planning.CAP * plan.n_fixed, abs=1)
    assert plan.design.beta == pytest.approx(0.2) and plan.design.mde == plan.mde
    assert plan.expected_winner == "a"  # light regularisation predicts better
    assert "planned before traffic" in plan.sentence and plan.record()["n_fixed"] == plan.n_fixed


def test_plan_refuses_arms_that_cannot_be_told_apart():
    rewards = pd.DataFrame({"a": [0.5, 0.7, 0.6], "b": [0.5, 0.7, 0.6]})
    with pytest.raises(ValueError, match="equally well"):
        planning.plan(rewards, "a", "b")
    with pytest.raises(ValueError, match="no validation rewards"):
        planning.plan(rewards, "a", "c")
