"""bench/experiments.py: it writes only its own key of bench/results.json; a small run works end to end."""

from __future__ import annotations

import json

import pytest

from bench import experiments


def test_write_changes_only_the_experiments_key(tmp_path):
    path = tmp_path / "results.json"
    before = {"started": "x", "a": {"p50": 1.5, "name": "ü"}, "targets": [1, 2]}
    path.write_text(json.dumps(before, indent=2, ensure_ascii=False), encoding="utf-8")
    experiments.write({"aa_false_positive_rate_sequential": 0.04}, path)
    after = json.loads(path.read_text(encoding="utf-8"))
    assert after == before | {"experiments": {"aa_false_positive_rate_sequential": 0.04}}
    experiments.write({"aa_false_positive_rate_sequential": 0.05}, path)  # replaced, not added twice
    assert (
        json.loads(path.read_text(encoding="utf-8"))["experiments"]["aa_false_positive_rate_sequential"]
        == 0.05
    )
    path.write_text('{"a": 1}', encoding="utf-8")  # another layout: refuse rather than reformat it
    with pytest.raises(SystemExit, match="not in the json.dumps"):
        experiments.write({}, path)


def test_requests_for_gives_both_arms_their_n():
    n = 900
    requests = experiments.requests_for(n)
    assert requests > 2 * n and (requests / 2 - n) / (requests**0.5 / 2) >= 5.5


@pytest.mark.slow
def test_a_small_run():
    results = experiments.run(experiments=60, seed=1)
    for key in (
        "aa_false_positive_rate_sequential",
        "aa_false_positive_rate_naive_peeking",
        "fixed_horizon_requests_per_arm",
        "mean_requests_to_decision_sequential",
        "mean_requests_to_decision_sequential_cuped",
        "power_sequential",
        "power_sequential_cuped",
        "power_fixed_horizon",
        "cuped_variance_ratio",
    ):
        assert key in results
    assert 0 < results["cuped_variance_ratio"] < 1
    assert results["aa_false_positive_rate_naive_peeking"] >= results["aa_false_positive_rate_sequential"]
    assert results["plan"]["source"] == "validation split"
    # the CUPED test planned for more power: a futility boundary for a smaller β stops for futility less
    more = [results[f"sequential_cuped_planned_power_{p}"] for p in (85, 90)]
    assert results["sequential_cuped"]["futility"] >= more[0]["futility"] >= more[1]["futility"]
    assert all(m["vs_fixed"] > 0 for m in more)
