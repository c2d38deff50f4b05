"""The sample-ratio check against the χ² formula and a published example."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from experiment import srm


def test_kohavi_tang_xu_example():
    # Kohavi, Tang, Xu, "Trustworthy Online Controlled Experiments" (2020): 821,588 control and
    # 815,482 treatment users for a 50/50 design, a ratio of 0.993, p ≈ 1.8e-6: a mismatch
    result = srm.check_srm({"control": 821_588, "treatment": 815_482}, {"control": 50, "treatment": 50})
    assert result.p_value == pytest.approx(1.8e-6, rel=0.05)
    assert result.mismatch and "sample ratio mismatch" in result.sentence


def test_three_arms_match_the_formula():
    counts, weights = {"a": 520, "b": 290, "c": 190}, {"a": 0.5, "b": 0.3, "c": 0.2}
    n = sum(counts.values())
    chi2 = sum((counts[a] - weights[a] * n) ** 2 / (weights[a] * n) for a in counts)
    result = srm.check_srm(counts, weights)
    assert result.chi2 == pytest.approx(chi2) and result.df == 2
    assert result.p_value == pytest.approx(stats.chi2.sf(chi2, 2))
    assert result.ok  # p ≈ 0.26


def test_threshold_is_one_in_a_thousand():
    # 1,000 requests, 50/50: 550/450 gives χ² = 10, p ≈ 0.0016 (not flagged); 555/445 gives p ≈ 5e-4
    assert srm.check_srm({"a": 550, "b": 450}, {"a": 1, "b": 1}).ok
    assert srm.check_srm({"a": 555, "b": 445}, {"a": 1, "b": 1}).mismatch


def test_an_arm_that_served_nothing_is_a_mismatch():
    result = srm.check_srm({"a": 400}, {"a": 50, "b": 50})
    assert result.counts == {"a": 400, "b": 0} and result.mismatch


def test_periods_with_their_own_weights():
    # 50/50 for 1,000 requests, then 90/10 for 1,000: the expected counts are 1,400 / 600
    periods = [({"a": 500, "b": 500}, {"a": 50, "b": 50}), ({"a": 900, "b": 100}, {"a": 90, "b": 10})]
    result = srm.check_srm_periods(periods)
    assert result.expected == pytest.approx({"a": 1400, "b": 600}) and result.ok
    # the same counts checked against the first weights only would be flagged
    assert srm.check_srm({"a": 1400, "b": 600}, {"a": 50, "b": 50}).mismatch


def test_from_log_and_bad_input():
    rows = pd.DataFrame({"arm": ["a"] * 480 + ["b"] * 520})
    assert srm.srm(rows, {"a": 50, "b": 50}).ok
    with pytest.raises(ValueError, match="no configured weight"):
        srm.check_srm({"a": 10, "c": 3}, {"a": 50, "b": 50})
    with pytest.raises(ValueError, match="positive weight"):
        srm.check_srm({"a": 10, "b": 3}, {"a": 100, "b": 0})
    assert srm.check_srm({"a": 10, "b": 10}, {"a": 1, "b": 1}).record()["mismatch"] is False
