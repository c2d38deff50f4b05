"""Guardrails on the real local stack, with a deliberately slow arm and a deliberately failing arm.

Both are MLflow pyfunc models registered in the test's own tracking store (models from code: the
file below is logged with the model), served by the real seldon-core model server beside model-a.
A monitored run must stop at the first guardrail check, hand all the traffic back to the control
(the served working copy is edited and the gateway reloads it), and promotion must refuse.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pandas as pd
import pytest
import requests

import experiment
import feedback
from experiment import guardrails, sequential
from experiment.run_monitor import CHECK_EVERY, GUARDRAIL_BREACH, MIN_LATENCIES
from serving import deployment as sdep
from serving import manifest as manifest_yaml
from serving.endpoints import Endpoints
from serving.manifest import set_traffic

pytestmark = pytest.mark.stack

MODEL = "wines-classifier"
SLEEP = 0.05  # seconds per request: ten times or more what model-a takes
CODE = """
import time

import mlflow


class Arm(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        {body}


mlflow.models.set_model(Arm())
"""


def register(tmp_path, alias: str, body: str):
    """Log a pyfunc model from code with the wines' signature, register it, point ``alias`` at it."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from training.data import FEATURES, load_wine_quality

    path = tmp_path / f"{alias}.py"
    path.write_text(CODE.format(body=textwrap.indent(body, " " * 8).strip()))
    features = load_wine_quality()[FEATURES].head(5)
    with mlflow.start_run(run_name=f"guardrail-test-{alias}"):
        info = mlflow.pyfunc.log_model(
            "model",
            python_model=str(path),
            signature=infer_signature(features, np.full(len(features), 6.0)),
            registered_model_name=MODEL,
        )
    MlflowClient().set_registered_model_alias(MODEL, alias, info.registered_model_version)


@pytest.fixture(scope="module")
def guarded(trained_arms, tmp_path_factory):
    """model-a (@a) against model-b, slow (@slow), and model-c, failing (@failing): traffic 50/50/0."""
    folder = tmp_path_factory.mktemp("guardrails")
    register(folder, "slow", f"time.sleep({SLEEP})\nreturn [6.0] * len(model_input)")
    register(folder, "failing", 'raise RuntimeError("this arm fails every request")')
    from serving.local import LocalStack

    path = folder / "model-a-b-c.yaml"
    shutil.copy(feedback.REPO / "serving" / "model-a-b-c.yaml", path)
    document = manifest_yaml.load(path)
    for predictor in document["spec"]["predictors"]:
        alias = {"model-b": "slow", "model-c": "failing"}.get(predictor["name"])
        if alias:
            predictor["graph"]["modelUri"] = f"models:/{MODEL}@{alias}"
    manifest_yaml.write(document, path)
    set_traffic(path, {"model-a": 50, "model-b": 50, "model-c": 0})
    stack = LocalStack.up(path, port=0, state_dir=folder / "stack", timeout=300)
    # warm, as a stack in production is: a cold model server's first answers (tens of ms) would sit
    # in model-a's p95 and hide the slow arm's breach behind an inconclusive ratio for a few checks
    served_by(Endpoints.local(stack.state_dir), n=40)
    yield stack
    stack.down()


def design() -> experiment.monitored.planning.Plan:
    # a test that cannot decide before the first guardrail check (min_n per arm > 50 requests)
    test = sequential.Design(mde=0.05, n_max=2000, sd=0.25)
    return experiment.monitored.planning.Plan("model-a", "x", {}, {}, 0.05, 0.05, 0.8, 1000, test)


def served_by(endpoints: Endpoints, n: int = 30) -> set[str]:
    answered = set()
    row = [[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]
    for _ in range(n):
        answer = requests.post(endpoints.predictions_url, json={"data": {"ndarray": row}}, timeout=10)
        answer.raise_for_status()
        answered |= {endpoints.nodes[node] for node in answer.json()["meta"]["requestPath"]}
    return answered


def run(stack, tmp_path, name):
    return experiment.run_monitored(
        Endpoints.local(stack.state_dir),
        design(),
        control="model-a",
        state_dir=stack.state_dir,
        prometheus_url=stack.prometheus_url,
        covariates=False,
        log_path=tmp_path / f"{name}.csv",
    )


def test_a_slow_arm_breaches_the_latency_guardrail_and_the_run_rolls_back(guarded, tmp_path):
    result = run(guarded, tmp_path, "slow")
    assert result.decision == GUARDRAIL_BREACH, result.sentence
    # the first checks once each arm has MIN_LATENCIES answers, not the end of the hold-out
    assert result.look is not None and result.look < 2 * MIN_LATENCIES + 4 * CHECK_EVERY
    latency = next(r for r in result.guardrails["model-b"] if r.name.startswith("latency"))
    assert latency.status == guardrails.BREACH and latency.bound[0] > latency.margin
    # rolled back: the served working copy gives model-a everything, and the gateway serves it so
    assert "rolled back to model-a" in result.rollback
    assert sdep.load(guarded.manifest_path).traffic == {"model-a": 100, "model-b": 0, "model-c": 0}
    assert served_by(Endpoints.local(guarded.state_dir)) == {"model-a"}
    # the log records where it stopped; promotion refuses, and says why
    log = pd.read_csv(result.replay.path)
    assert log.loc[log["look"] == result.look, "decision"].item() == GUARDRAIL_BREACH
    record = tmp_path / "promotions.json"
    outcome = experiment.promote(
        result.replay.path,
        manifest=guarded.manifest_path,
        record=record,
        state_dir=guarded.state_dir,
        decision=result,
    )
    assert not outcome.changed and "guardrail was breached" in outcome.message
    assert not record.exists()


def test_a_failing_arm_breaches_the_error_rate_and_its_lost_traffic_fails_the_sample_ratio_check(
    guarded, tmp_path
):
    set_traffic(guarded.manifest_path, {"model-a": 50, "model-b": 0, "model-c": 50})
    guarded.reload()
    result = run(guarded, tmp_path, "failing")
    assert result.decision == GUARDRAIL_BREACH, result.sentence
    errors = next(r for r in result.guardrails["model-c"] if r.name.startswith("error"))
    assert errors.status == guardrails.BREACH and errors.treatment_value == 1.0
    # every request model-c got failed, so feedback.py's retries landed on model-a: the split is broken
    log_srm, prometheus_srm = result.srm
    assert log_srm.mismatch and log_srm.counts.get("model-c", 0) == 0
    assert prometheus_srm.source == "Prometheus"
    assert sdep.load(guarded.manifest_path).traffic == {"model-a": 100, "model-b": 0, "model-c": 0}
    assert served_by(Endpoints.local(guarded.state_dir)) == {"model-a"}
    assert not result.gate.allowed and any("sample ratio mismatch" in r for r in result.gate.reasons)
    json.dumps(result.record())
