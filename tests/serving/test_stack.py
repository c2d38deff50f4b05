"""The local Seldon stack, for real: seldon-core microservices, the gateway and Prometheus on
127.0.0.1. Every test sends bounded traffic to loopback only."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import psutil
import pytest
import requests
from scipy import stats

from experiment.prometheus_data import wait_for_scrape
from serving import deployment as sdep
from serving.local import LocalStack, stack_pids
from tests.traffic import (
    PREDICTION,
    ROW,
    BackgroundLoad,
    metric_sum_by_predictor,
    send_many,
)
from training.data import FEATURES

pytestmark = pytest.mark.stack


def gateway_counts(stack, service="predictions") -> Counter:
    """The gateway's own executor counters, read from its /metrics page."""
    text = requests.get(f"http://{stack.gateway_endpoint}/metrics", timeout=5).text
    counts = Counter()
    for line in text.splitlines():
        if (
            line.startswith("seldon_api_executor_server_requests_seconds_count{")
            and f'service="{service}"' in line
        ):
            labels, value = line.rsplit(" ", 1)
            predictor = labels.split('predictor_name="', 1)[1].split('"', 1)[0]
            counts[predictor] += int(float(value))
    return counts


def apply_split(stack, split: dict) -> None:
    """Edit the stack's working copy of the manifest (never the file `up` was given), apply it."""
    sdep.set_traffic(stack.manifest_path, split)
    assert stack.reload()["traffic"] == split


@pytest.fixture
def split_restored(stack):
    yield
    apply_split(stack, {"model-a": 50, "model-b": 50})


@pytest.mark.parametrize("split", [{"model-a": 50, "model-b": 50}, {"model-a": 80, "model-b": 20}])
def test_ingress_splits_traffic_by_the_weights(stack, stack_manifest, split_restored, split):
    given = stack_manifest.read_bytes()
    apply_split(stack, split)
    assert stack_manifest.read_bytes() == given  # the split changed the working copy only
    before = gateway_counts(stack)
    results = send_many(f"{stack.ingress_url}/predictions", 5000, concurrency=16)
    after = gateway_counts(stack)

    assert all(r.status == 200 for r in results)
    served = Counter(r.arm for r in results)  # the arm named by each response's requestPath
    observed = [served["model-a"], served["model-b"]]
    expected = [5000 * split["model-a"] / 100, 5000 * split["model-b"] / 100]
    assert stats.chisquare(observed, expected).pvalue > 0.001, observed
    # the gateway's metrics counted exactly the arms the responses name
    assert {p: after[p] - before[p] for p in split} == {
        "model-a": served["model-a"],
        "model-b": served["model-b"],
    }


def test_a_predictor_endpoint_reaches_only_its_arm_and_its_feedback_is_counted(stack):
    url = stack.predictor_urls["model-b"] + "/api/v1.0"
    results = send_many(f"{url}/predictions", 50, concurrency=4)
    assert {r.status for r in results} == {200} and {r.arm for r in results} == {"model-b"}

    prom = stack.prometheus_url
    wait_for_scrape(prom, time.time())
    feedback_before = metric_sum_by_predictor(prom, "seldon_api_model_feedback_total")
    reward_before = metric_sum_by_predictor(prom, "seldon_api_model_feedback_reward_total")
    feedback = {"request": PREDICTION, "response": results[0].body, "reward": 0.25}
    sent = send_many(f"{url}/feedback", 37, body=feedback, concurrency=4)
    assert {r.status for r in sent} == {200} and {r.arm for r in sent} == {"model-b"}
    wait_for_scrape(prom, time.time())

    feedback_after = metric_sum_by_predictor(prom, "seldon_api_model_feedback_total")
    reward_after = metric_sum_by_predictor(prom, "seldon_api_model_feedback_reward_total")
    assert feedback_after["model-b"] - feedback_before.get("model-b", 0) == 37
    assert feedback_after.get("model-a", 0) == feedback_before.get("model-a", 0)
    assert reward_after["model-b"] - reward_before.get("model-b", 0) == pytest.approx(37 * 0.25)


def test_feedback_on_the_ingress_lands_on_both_arms_as_on_a_cluster(stack):
    prom = stack.prometheus_url
    answer = send_many(stack.predictor_urls["model-a"] + "/api/v1.0/predictions", 1)[0]
    assert answer.arm == "model-a"
    wait_for_scrape(prom, time.time())
    before = metric_sum_by_predictor(prom, "seldon_api_model_feedback_total")
    # 200 rewards for a prediction that model-a made, all posted to the ingress
    feedback = {"request": PREDICTION, "response": answer.body, "reward": 0.5}
    sent = send_many(f"{stack.ingress_url}/feedback", 200, body=feedback, concurrency=8)
    assert {r.status for r in sent} == {200}
    wait_for_scrape(prom, time.time())
    after = metric_sum_by_predictor(prom, "seldon_api_model_feedback_total")
    landed = {p: after.get(p, 0) - before.get(p, 0) for p in ("model-a", "model-b")}
    assert sum(landed.values()) == 200
    assert landed["model-b"] > 50  # model-b was credited for model-a's predictions
    assert Counter(r.arm for r in sent) == Counter({k: int(v) for k, v in landed.items()})


BAD_PREDICTIONS = {
    "too few features": (
        {"data": {"ndarray": [ROW[:10]]}},
        "row 0 has 10 values, the model expects 11 features",
    ),
    "too many features": ({"data": {"ndarray": [ROW + [1.0]]}}, "row 0 has 12 values"),
    "unknown names": ({"data": {"names": [f"x{i}" for i in range(11)], "ndarray": [ROW]}}, "unknown ['x0'"),
    "missing name": (
        {"data": {"names": FEATURES[:10] + ["colour"], "ndarray": [ROW]}},
        "missing ['alcohol']",
    ),
    "a string value": (
        {"data": {"names": FEATURES, "ndarray": [ROW[:10] + ["strong"]]}},
        "row 0, 'alcohol': 'strong' is not a number",
    ),
    "NaN": (
        '{"data": {"ndarray": [[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, NaN]]}}',
        "'alcohol': nan is not a finite number",
    ),
    "Infinity": (
        '{"data": {"ndarray": [[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 1e999]]}}',
        "inf is not a finite number",
    ),
    "null": ({"data": {"ndarray": [ROW[:10] + [None]]}}, "None is not a number"),
    "empty batch": ({"data": {"ndarray": []}}, "empty batch"),
    "ragged rows": ({"data": {"ndarray": [ROW, ROW[:3]]}}, "row 1 has 3 values"),
    "tensor of the wrong size": (
        {"data": {"tensor": {"shape": [1, 11], "values": ROW[:5]}}},
        "'tensor.values' must hold",
    ),
    "malformed JSON": ('{"data": {"ndarray": [[1, 2', "Can't find JSON"),
    "not an object": ("[1, 2, 3]", "must be a JSON object"),
    "no data": ({"strData": "hello"}, "needs a 'data' object"),
    "deep nesting": ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
}


@pytest.mark.parametrize("where", ["ingress", "model server"])
@pytest.mark.parametrize("case", sorted(BAD_PREDICTIONS))
def test_bad_input_gets_a_4xx_naming_the_problem_and_serving_goes_on(stack, where, case):
    body, message = BAD_PREDICTIONS[case]
    base = stack.ingress_url if where == "ingress" else stack.urls["models"]["model-a"] + "/api/v1.0"
    bad = send_many(f"{base}/predictions", 1, body=body)[0]
    assert 400 <= bad.status < 500, bad
    assert message in bad.info
    good = send_many(f"{base}/predictions", 1)[0]
    assert good.status == 200 and good.arm in ("model-a", "model-b")


def test_gateway_limits_bodies_and_routes(stack):
    big = send_many(f"{stack.ingress_url}/predictions", 1, body=b"x" * (2 << 20))[0]
    assert big.status == 413 and "larger than" in big.info
    wrong = send_many(f"http://{stack.gateway_endpoint}/seldon/default/other-model/api/v1.0/predictions", 1)[
        0
    ]
    assert wrong.status == 404 and "no SeldonDeployment 'other-model'" in wrong.info
    zero = send_many(stack.predictor_urls["model-a"] + "/api/v1.0/feedback", 1, body={"reward": 0})[0]
    assert zero.status == 400 and "non-zero 'reward'" in zero.info


def test_seldon_client_and_the_original_curl_work_unchanged(stack):
    from seldon_core.seldon_client import SeldonClient

    client = SeldonClient(
        gateway="istio",
        gateway_endpoint=stack.gateway_endpoint,
        namespace="default",
        deployment_name="wines-classifier",
        client_return_type="proto",
    )
    predicted = client.predict(data=np.array([ROW]), names=FEATURES, payload_type="ndarray")
    assert predicted.success, predicted.msg
    assert set(predicted.response.meta.requestPath) <= {"model-a", "model-b"}
    sent = client.feedback(
        prediction_request=predicted.request, prediction_response=predicted.response, reward=0.9
    )
    assert sent.success, sent.msg

    # the original example's command, with its host and namespace
    curl = (
        "curl -s -X POST -H 'Content-Type: application/json' "
        '-d \'{"data": {"names": [], "ndarray": '
        "[[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]}}' "
        f"http://{stack.gateway_endpoint}/seldon/default/wines-classifier/api/v1.0/predictions"
    )
    answer = json.loads(
        subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30, check=True).stdout
    )
    assert len(answer["data"]["ndarray"]) == 1 and set(answer["meta"]["requestPath"]) <= {
        "model-a",
        "model-b",
    }


def test_a_new_split_applies_under_load_without_a_single_failure(stack, split_restored):
    with BackgroundLoad(f"{stack.ingress_url}/predictions", concurrency=8, max_seconds=60) as load:
        time.sleep(1)
        for split in (
            {"model-a": 100, "model-b": 0},
            {"model-a": 0, "model-b": 100},
            {"model-a": 50, "model-b": 50},
        ):
            sdep.set_traffic(stack.manifest_path, split)  # the gateway notices the edit by itself
            deadline = time.monotonic() + 10
            while (
                requests.get(f"http://{stack.gateway_endpoint}/admin/status", timeout=5).json()["traffic"]
                != split
            ):
                assert time.monotonic() < deadline, "the gateway did not pick up the new split"
                time.sleep(0.1)
            applied = time.time()
            time.sleep(1.5)
            window = [r for r in load.results if r.sent_at > applied + 0.05]
            if split["model-a"] in (0, 100):
                only = "model-a" if split["model-a"] == 100 else "model-b"
                assert window and {r.arm for r in window} == {only}
    assert len(load.results) > 200
    assert Counter(r.status for r in load.results) == Counter({200: len(load.results)})


def test_a_killed_model_server_answers_503_then_comes_back(stack):
    victim = stack.status()["processes"]["model-b"]
    restarts = victim["restarts"]
    with BackgroundLoad(
        f"{stack.ingress_url}/predictions", concurrency=4, max_seconds=90, pause=0.01
    ) as load:
        time.sleep(1)
        killed_at = time.time()
        os.killpg(victim["pid"], signal.SIGKILL)  # the whole container, as an OOM kill would
        deadline = time.monotonic() + 60
        while True:
            proc = stack.status()["processes"]["model-b"]
            if proc["restarts"] > restarts and proc["ready"]:
                break
            assert time.monotonic() < deadline, "the stack did not restart model-b"
            time.sleep(0.2)
        recovered_at = time.time()
        time.sleep(3)
    after_kill = [r for r in load.results if r.sent_at > killed_at]
    outage = [r for r in after_kill if r.status != 200]
    assert outage, "no request met the dead model server"
    # 503 while the arm is down, and while the restarted server has opened its port but not loaded its
    # model: the gateway waits for its readiness probe, as a Service does - never a 504
    assert {r.status for r in outage} == {503}, Counter(r.status for r in outage)
    assert all("'model-b'" in r.info for r in outage)
    assert any("not ready" in r.info for r in outage)  # refused, then held back until the probe answered
    assert max(r.seconds for r in after_kill) < 6  # a dead arm never hangs a request past the timeout
    # the gateway's own readiness probe sees it within one probe period (plus its answer's time) of the
    # supervisor's, as a Service's endpoint follows the kubelet's probe
    period = next(
        p for p in sdep.load(stack.manifest_path).predictors if p.name == "model-b"
    ).readiness.period
    recovered = [r for r in load.results if r.sent_at > recovered_at + period + 0.5]
    assert {r.status for r in recovered} == {200} and {"model-a", "model-b"} <= {r.arm for r in recovered}
    assert {r.arm for r in after_kill if r.status == 200} >= {"model-a"}  # model-a served throughout


def test_cli_up_status_down_binds_only_loopback_and_leaves_nothing(trained_arms, stack_manifest, tmp_path):
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "serving.local", "--state-dir", str(state)]
    manifest = tmp_path / "m.yaml"  # a file of this test's own: up must leave it as it is
    manifest.write_text(stack_manifest.read_text())
    up = subprocess.run(
        [*cli, "up", str(manifest), "--port", "0"], capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stderr
        assert "ingress     http://127.0.0.1:" in up.stdout
        assert (state / "manifest.yaml").read_text() == manifest.read_text() == stack_manifest.read_text()
        status = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60).stdout
        assert "process model-a" in status and "ready" in status

        pids = stack_pids(state)
        assert (
            len(pids) >= 8
        )  # supervisor, 2 x (microservice, 2 gunicorn masters, workers...), gateway, prometheus
        listening = set()
        for pid in pids:
            try:
                listening |= {
                    c.laddr
                    for c in psutil.Process(pid).net_connections("inet")
                    if c.status == psutil.CONN_LISTEN
                }
            except psutil.NoSuchProcess:
                pass
        assert len(listening) >= 7  # ingress, 2 predictor ports, 2 model + 2 metrics ports, prometheus
        assert {address.ip for address in listening} == {"127.0.0.1"}

        again = subprocess.run(
            [*cli, "up", str(tmp_path / "other.yaml")], capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 1 and "cannot read the manifest" in again.stderr
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and down.stdout.startswith("stopped ")
    assert stack_pids(state) == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert not LocalStack(state).running()
