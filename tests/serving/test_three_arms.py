"""A/B/n end to end on the real local stack: serving/model-a-b-c.yaml (three predictors, 34/33/33),
a monitored replay, each challenger against the control with a Bonferroni correction, and the
promotion of one - the registry alias and the served split."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace

import pytest
import requests

import experiment
import feedback
from experiment import sequential
from serving import deployment as sdep
from serving.endpoints import Endpoints

pytestmark = pytest.mark.stack

MANIFEST = feedback.REPO / "serving" / "model-a-b-c.yaml"


def test_the_three_arm_manifest_keeps_arms_a_and_b_as_the_a_b_test_has_them():
    three, two = sdep.load(MANIFEST), sdep.load(feedback.REPO / "serving" / "model-a-b.yaml")
    assert sum(three.traffic.values()) == 100 and len(three.traffic) == 3
    for name in ("model-a", "model-b"):
        assert three.predictor(name).model_uri == two.predictor(name).model_uri


@pytest.fixture(scope="module")
def three_arms(trained_arms, tmp_path_factory):
    from serving.local import LocalStack
    from training.arms import ARM_C
    from training.tracking import run_arm

    run_arm(alias="c", **ARM_C["c"])
    folder = tmp_path_factory.mktemp("abn")
    shutil.copy(MANIFEST, folder / "model-a-b-c.yaml")
    stack = LocalStack.up(folder / "model-a-b-c.yaml", port=0, state_dir=folder / "stack", timeout=300)
    # warm, as a stack in production is: a cold model server's first answers would sit in an arm's p95
    # and can breach the latency guardrail on their own
    warm = Endpoints.local(stack.state_dir).predictions_url
    row = [[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]
    for _ in range(60):
        requests.post(warm, json={"data": {"ndarray": row}}, timeout=10).raise_for_status()
    yield stack
    stack.down()


def test_a_b_n_replay_verdict_with_correction_and_promotion_of_one(three_arms, tmp_path):
    stack = three_arms
    endpoints = Endpoints.local(stack.state_dir)
    plan = experiment.plan_experiment(stack.manifest_path, control="model-c")
    # the plan is for the challenger that does best on the validation split
    assert plan.control == "model-c" and plan.treatment == "model-a"
    # without Wald's futility boundary (which gives up on a real effect of the planned size about
    # β = 20% of the time), the test runs until a winner or the planned n: a winner, but for
    # a chance of well under 1% at twice the one-look n
    plan = replace(plan, design=replace(plan.design, futility=False))
    result = experiment.run_monitored(
        endpoints,
        plan,
        state_dir=stack.state_dir,
        prometheus_url=stack.prometheus_url,
        log_path=tmp_path / "abn.csv",
    )
    assert set(result.tests) == {"model-a", "model-b"}
    for test in result.tests.values():  # Bonferroni: each challenger at alpha / 2
        assert test.design.alpha == pytest.approx(plan.design.alpha / 2)
    assert len(result.srm[0].counts) == 3 and result.srm[0].df == 2
    served = Counter(result.replay.log["arm"].dropna())
    assert set(served) == {"model-a", "model-b", "model-c"}
    # model-a beats the model that predicts the mean by far: the run stops at that winner
    assert result.decision == sequential.WINNER, result.sentence
    winners = {a for a, t in result.tests.items() if t.decision == sequential.WINNER}
    assert result.chosen in winners
    assert result.chosen == max(winners, key=lambda a: result.tests[a].difference)

    record = tmp_path / "promotions.json"
    outcome = experiment.promote(
        result.replay.path, record=record, state_dir=stack.state_dir, decision=result
    )
    assert outcome.promoted == result.gate.allowed, result.gate.reasons
    if outcome.promoted:
        split = {p: 100 if p == result.chosen else 0 for p in ("model-a", "model-b", "model-c")}
        assert sdep.load(stack.manifest_path).traffic == split
        entry = json.loads(record.read_text())[str(stack.manifest_path.resolve())][-1]
        assert entry["winner"] == result.chosen
        assert set(entry["audit"]["tests"]) == {"model-a", "model-b"}
        row = [[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]
        answers = {
            next(
                iter(
                    requests.post(
                        endpoints.predictions_url, json={"data": {"ndarray": row}}, timeout=10
                    ).json()["meta"]["requestPath"]
                )
            )
            for _ in range(20)
        }
        assert {endpoints.nodes[n] for n in answers} == {result.chosen}
