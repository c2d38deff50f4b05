"""feedback.reward: the bounded reward every statistic of the experiment rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import feedback

finite = st.floats(min_value=-1e150, max_value=1e150, allow_nan=False, allow_infinity=False)


@given(truth=finite, prediction=finite)
def test_reward_is_bounded_and_never_zero(truth, prediction):
    r = feedback.reward(truth, prediction)
    assert 0 < r <= 1
    assert np.float32(r) > 0  # seldon-core carries the reward as float32 and skips exactly 0


@given(e1=finite, e2=finite)
def test_reward_is_monotone_in_the_absolute_error(e1, e2):
    small, large = sorted((abs(e1), abs(e2)))
    assert feedback.reward(0.0, small) >= feedback.reward(0.0, large)
    assert feedback.reward(0.0, small) == feedback.reward(0.0, -small)  # over- and under-estimates alike


def test_reward_is_one_for_an_exact_prediction_and_falls_with_the_error():
    rewards = [feedback.reward(6.0, 6.0 + e) for e in (0.0, 0.5, 1.0, 2.0, 10.0)]
    assert rewards[0] == 1.0
    assert all(a > b for a, b in zip(rewards, rewards[1:], strict=False))


@pytest.mark.parametrize("truth, prediction", [(1e308, -1e308), (-1.7e308, 1.7e308)])
def test_reward_of_extreme_but_finite_numbers_is_the_floor_not_an_error(truth, prediction):
    # the difference overflows to infinity although both numbers are finite
    assert feedback.reward(truth, prediction) == feedback.REWARD_FLOOR


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_reward_refuses_non_finite_numbers(bad):
    with pytest.raises(ValueError, match="finite"):
        feedback.reward(bad, 6.0)
