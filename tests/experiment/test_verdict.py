"""experiment.verdict: the decision, checked on samples of real error populations - where the truth
is known and the false-decision rate can be measured - and end to end on the real local stack (served
by seldon-core, counted by Prometheus), where it must pick the better arm and declare no decision
between two copies of the same model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import experiment
import feedback
from experiment.stats import power
from tests.experiment.conftest import replay_window, rewards_of, set_split, synthetic_log


@pytest.mark.slow  # 400 verdicts, each with its bootstrap: ~20 s
def test_two_arms_drawn_from_one_model_give_a_decision_at_rate_alpha_only(populations):
    population = populations["model-a"]
    rng = np.random.default_rng(3)
    trials, n = 400, 300
    decisions = 0
    for i in range(trials):
        v = experiment.verdict(
            synthetic_log({"model-a": rng.choice(population, n), "model-b": rng.choice(population, n)}),
            resamples=200,
            seed=i,
        )
        decisions += v.significant
    assert 0.02 <= decisions / trials <= 0.085, decisions  # 5% +- 3 binomial sd


def test_verdict_names_the_better_arm_whatever_the_label_order(populations):
    rng = np.random.default_rng(5)
    good, bad = rng.choice(populations["model-a"], 3000), rng.choice(populations["model-worse"], 3000)
    for names in (
        ("model-a", "model-b"),
        ("model-b", "model-a"),
    ):  # the better arm first, then second by name
        v = experiment.verdict(synthetic_log({names[0]: good, names[1]: bad}))
        s = v.stats
        assert v.significant and v.winner == names[0]
        assert v.difference == pytest.approx(s[names[0]].mean_reward - s[names[1]].mean_reward)
        assert 0 < v.difference_ci[0] < v.difference < v.difference_ci[1]
        assert v.rmse_difference < 0 and v.rmse_difference_ci[1] < 0  # the better arm errs less
        assert v.sentence.startswith(
            f"{names[0]} wins: mean reward {s[names[0]].mean_reward:.3f} vs {s[names[1]].mean_reward:.3f}"
        )
        assert f"n = {s[names[0]].n}/{s[names[1]].n}" in v.sentence


def test_a_decision_says_the_sample_size_a_test_of_this_power_needs(populations):
    rng = np.random.default_rng(5)
    v = experiment.verdict(
        synthetic_log(
            {
                "model-a": rng.choice(populations["model-a"], 3000),
                "model-b": rng.choice(populations["model-worse"], 3000),
            }
        )
    )
    assert v.significant and 2 < v.required_n < 3000 and v.more_requests_needed == 0
    assert f"needs about {v.required_n:,.0f} requests per arm" in v.sample_size
    assert "80% power at α = 0.05" in v.sample_size and "the smaller arm had 3,000, enough" in v.sample_size
    assert v.summary == f"{v.sentence} {v.sample_size}"


def test_no_decision_says_how_many_requests_are_needed(populations):
    rng = np.random.default_rng(9)
    log = synthetic_log(
        {
            "model-a": rng.choice(populations["model-a"], 40),
            "model-b": rng.choice(populations["model-worse"], 40),
        }
    )
    v = experiment.verdict(log)
    assert not v.significant and v.winner is None
    assert v.required_n > 40 and v.more_requests_needed == v.required_n - 40
    assert v.sentence.startswith("no decision between model-a and model-b")
    assert f"{v.required_n:,.0f} requests per arm" in v.sentence
    assert v.summary == v.sentence  # the sentence already says it


@pytest.mark.stack
@pytest.mark.slow
def test_verdict_picks_the_clearly_better_arm_on_the_real_stack(trio, populations, tmp_path):
    """@a against the mean-predicting model, every hold-out row replayed twice (~1,960 per arm).

    At that size the Welch test's power for the difference these two models make on the
    hold-out rows is checked first to be above 99%, so a miss is a bug, not bad luck.
    """
    a, worse = rewards_of(populations["model-a"]), rewards_of(populations["model-worse"])
    assert power(1100, a.mean() - worse.mean(), a.std(), worse.std()) > 0.99  # the design holds
    stack, manifest = trio
    set_split(stack, manifest, {"model-a": 50, "model-worse": 50, "model-twin": 0})
    first, since, _ = replay_window(stack, log_path=tmp_path / "1.csv")
    second = feedback.replay(
        feedback.Endpoints.local(stack.state_dir), log_path=tmp_path / "2.csv", progress=False
    )
    log = pd.concat([first.log, second.log], ignore_index=True)
    experiment.cross_check(log, stack.prometheus_url, since=since)

    v = experiment.verdict(log)
    assert v.significant and v.winner == "model-a", v.sentence
    assert v.rmse_difference_ci[1] < 0, v  # and its RMSE is lower, with 95% confidence
    assert v.stats["model-a"].rmse_ci[1] < v.stats["model-worse"].rmse_ci[0]
    # the same verdict from the two log files, as a glob
    assert experiment.verdict(str(tmp_path / "[12].csv")).sentence == v.sentence


@pytest.mark.stack
def test_no_decision_between_two_copies_of_one_model_on_the_real_stack(trio, tmp_path):
    """model-a and model-twin serve the same registered version; each gets the same 400 rows.

    With a random split, two identical models still produce a "decision" 5% of the time by
    design (that rate is checked above on 400 simulated splits); giving each copy the very same
    requests instead makes the expected answer certain, and checks that both copies really
    serve the same model, prediction for prediction.
    """
    stack, manifest = trio
    try:
        set_split(stack, manifest, {"model-a": 100, "model-worse": 0, "model-twin": 0})
        a, since, _ = replay_window(stack, limit=400, log_path=tmp_path / "a.csv")
        set_split(stack, manifest, {"model-a": 0, "model-worse": 0, "model-twin": 100})
        twin = feedback.replay(
            feedback.Endpoints.local(stack.state_dir),
            limit=400,
            log_path=tmp_path / "twin.csv",
            progress=False,
        )
    finally:
        set_split(stack, manifest, {"model-a": 50, "model-worse": 50, "model-twin": 0})
    assert set(a.log["arm"]) == {"model-a"} and set(twin.log["arm"]) == {"model-twin"}
    predictions = [run.log.set_index("request_id")["prediction"].sort_index() for run in (a, twin)]
    assert predictions[0].index.equals(predictions[1].index) and np.array_equal(
        predictions[0], predictions[1]
    )

    log = pd.concat([a.log, twin.log], ignore_index=True)
    experiment.cross_check(log, stack.prometheus_url, since=since)
    v = experiment.verdict(log)
    assert not v.significant and v.winner is None, v.sentence
    assert v.p_value > 0.99 and v.stats["model-a"].rmse == pytest.approx(
        v.stats["model-twin"].rmse, rel=1e-12
    )
    assert v.sentence.startswith("no decision")
