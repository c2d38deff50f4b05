"""A/B/n: Holm's correction against the procedure done by hand, and the many-to-one table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiment import comparisons


def test_holm_by_hand():
    # Holm (1979): sort p ascending, multiply the i-th smallest by (m - i + 1), running maximum, cap 1
    table = comparisons.adjust({"b": 0.01, "c": 0.04, "d": 0.03}, alpha=0.05)
    assert table["adjusted_p"].to_dict() == pytest.approx({"b": 0.03, "c": 0.06, "d": 0.06})
    assert table["reject"].to_dict() == {"b": True, "c": False, "d": False}
    bonferroni = comparisons.adjust({"b": 0.01, "c": 0.04, "d": 0.03}, method="bonferroni")
    assert bonferroni["adjusted_p"].to_dict() == pytest.approx({"b": 0.03, "c": 0.12, "d": 0.09})
    with pytest.raises(ValueError, match="method"):
        comparisons.adjust({"b": 0.01}, method="bh")


def test_compare_three_arms():
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "arm": np.repeat(["a", "b", "c"], 600),
            "reward": np.concatenate(
                [rng.normal(0.70, 0.2, 600), rng.normal(0.76, 0.2, 600), rng.normal(0.70, 0.2, 600)]
            ),
        }
    )
    table = comparisons.compare(rows, control="a")
    assert list(table.index) == ["b", "c"]
    assert table.loc["b", "significant"] and table.loc["b", "decision"] == "better"
    assert not table.loc["c", "significant"]
    assert (table["adjusted_p"] >= table["p_value"]).all()
    assert comparisons.best(table) == "b"
    with pytest.raises(ValueError, match="control"):
        comparisons.compare(rows, control="z")


def test_monitor_all_splits_alpha_between_the_challengers():
    from experiment import sequential as seq

    rng = np.random.default_rng(1)
    n = 6000
    arm = rng.choice(["a", "b", "c"], n)
    reward = np.clip(rng.normal(0.7, 0.2, n) + np.where(arm == "b", 0.08, 0.0), 0, 1)
    rows = pd.DataFrame({"request_id": np.arange(n), "arm": arm, "reward": reward})
    results = comparisons.monitor_all(rows, "a", seq.Design(mde=0.05, n_max=2000, sd=0.2))
    assert set(results) == {"b", "c"}
    assert results["b"].decision == seq.WINNER and results["b"].design.alpha == pytest.approx(0.025)
    assert results["c"].decision != seq.WINNER
