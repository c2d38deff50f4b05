"""One-command check of a cluster install: predict, feedback to the arm that answered, the counter.

    python -m serving.cluster smoke build/cluster/wines-classifier.yaml \\
        --ingress 127.0.0.1:8080 --prometheus http://127.0.0.1:9090

1. one prediction through the ingress (Istio -> an arm's executor -> our model server); the
   answer's ``meta.requestPath`` names the graph node, hence the arm, that answered;
2. one feedback (reward 1: a reward of exactly 0 is not counted by the Python wrapper) to that
   arm's own Service, through a ``kubectl port-forward`` this command starts and stops (or the
   address given with ``--predictor``);
3. Prometheus (kube-prometheus-stack, through the PodMonitor) shows that arm's
   ``seldon_api_model_feedback_total`` one higher, within a few scrape intervals.

Each step that fails says which part of the install to look at.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from serving import prometheus
from serving.cluster import ClusterError
from serving.cluster.endpoints import PortForwards, cluster_endpoints, port_forwards
from serving.endpoints import Endpoints

FEEDBACK = "seldon_api_model_feedback_total"
# one white wine of the UCI data set (the curl example in docs/cluster.md), named as in training
EXAMPLE_ROW = [7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]


class SmokeError(ClusterError):
    """A step of the smoke test failed; the message says which and where to look."""


@dataclass
class SmokeResult:
    arm: str
    prediction: float
    counter_before: float
    counter_after: float
    seconds_to_count: float

    def summary(self) -> str:
        return (
            f"predicted {self.prediction:.3f} through the ingress, answered by {self.arm}; feedback to "
            f"{self.arm}'s own Service accepted; Prometheus counted it ({FEEDBACK} "
            f"{self.counter_before:g} -> {self.counter_after:g}, {self.seconds_to_count:.1f} s after)"
        )


def _counter(url: str, endpoints: Endpoints, arm: str) -> float:
    selector = f'{{deployment_name="{endpoints.deployment}",predictor_name="{arm}"}}'
    result = prometheus.query(url, f"sum({FEEDBACK}{selector})")
    return float(result[0]["value"][1]) if result else 0.0


def check(
    endpoints: Endpoints,
    prometheus_url: str,
    timeout: float = 90,
    log: Callable[[str], None] | None = print,
) -> SmokeResult:
    """The three steps against reachable endpoints (ingress, the arms' own addresses, Prometheus)."""
    from training.data import FEATURES

    say = log or (lambda message: None)
    try:
        response = requests.post(
            endpoints.predictions_url,
            json={"data": {"names": FEATURES, "ndarray": [EXAMPLE_ROW]}},
            timeout=30,
        )
    except requests.RequestException as e:
        raise SmokeError(f"predict: the ingress {endpoints.predictions_url} is not reachable ({e})") from e
    if response.status_code != 200:
        raise SmokeError(
            f"predict: {endpoints.predictions_url} answered {response.status_code}: {response.text[:300]} "
            f"(404: no VirtualService for it - is the SeldonDeployment Available, Istio's gateway named in "
            f"Seldon's values? 5xx: look at the model container's log)"
        )
    answer = response.json()
    nodes = list((answer.get("meta") or {}).get("requestPath") or {})
    arms = [endpoints.nodes[n] for n in nodes if n in endpoints.nodes]
    if len(arms) != 1:
        raise SmokeError(
            f"predict: meta.requestPath names {nodes}, not one graph node of {sorted(endpoints.nodes)}: "
            f"is the image serving.microservice (it fills requestPath)?"
        )
    arm = arms[0]
    values = (answer.get("data") or {}).get("ndarray")
    while isinstance(values, list) and values:
        values = values[0]
    if not isinstance(values, (int, float)):
        raise SmokeError(f"predict: no prediction in the answer: {json.dumps(answer)[:300]}")
    prediction = float(values)
    say(f"predict: {prediction:.3f}, answered by {arm} ({nodes[0]})")

    try:
        before = _counter(prometheus_url, endpoints, arm)
    except prometheus.PrometheusError as e:
        raise SmokeError(f"prometheus: {e}") from e
    feedback = {
        "request": {"data": {"names": FEATURES, "ndarray": [EXAMPLE_ROW]}},
        "response": answer,
        "reward": 1,
    }
    try:
        sent = requests.post(endpoints.feedback_url(arm), json=feedback, timeout=30)
    except requests.RequestException as e:
        raise SmokeError(
            f"feedback: {arm}'s Service at {endpoints.feedback_url(arm)} is not reachable ({e})"
        ) from e
    if sent.status_code != 200:
        raise SmokeError(
            f"feedback: {endpoints.feedback_url(arm)} answered {sent.status_code}: {sent.text[:300]}"
        )
    say(f"feedback: reward 1 to {arm}'s own Service, accepted")

    sent_at = time.monotonic()
    deadline = sent_at + timeout
    after = before
    while time.monotonic() < deadline:
        after = _counter(prometheus_url, endpoints, arm)
        if after > before:
            result = SmokeResult(arm, prediction, before, after, time.monotonic() - sent_at)
            say(f"prometheus: {FEEDBACK} for {arm} {before:g} -> {after:g}")
            return result
        time.sleep(1)
    raise SmokeError(
        f"prometheus: {FEEDBACK} for {arm} stayed at {before:g} for {timeout:g} s after the feedback: is the "
        f"PodMonitor applied (kubectl get podmonitor -A), and does Prometheus list the pods as targets "
        f"(Status > Targets)?"
    )


def smoke(
    manifest,
    ingress: str,
    prometheus_url: str,
    predictors: dict[str, str] | None = None,
    kubectl: str = "kubectl",
    timeout: float = 90,
    log: Callable[[str], None] | None = print,
) -> SmokeResult:
    """``check`` for a rendered manifest; port-forwards each arm's Service unless ``predictors`` are given."""
    if predictors:
        endpoints = cluster_endpoints(manifest, ingress)
        endpoints.predictors = dict(predictors)
        return check(endpoints, prometheus_url, timeout, log)
    from serving.local import free_ports

    names = list(port_forwards(manifest))
    local_ports = dict(zip(names, free_ports(len(names)), strict=True))
    forwards = port_forwards(manifest, local_ports)
    endpoints = cluster_endpoints(manifest, ingress, local_ports=local_ports)
    with PortForwards(forwards, kubectl=kubectl):
        return check(endpoints, prometheus_url, timeout, log)
