"""A feedback is counted once per request id (serving/mlflow_server.py, serving/microservice.py):
the same Seldon-Puid twice counts once and is answered both times, different ids count, a reward of
0 is never remembered, and the memory is bounded (the oldest ids forgotten first). The last test
runs the real model servers behind the gateway and reads the counts in Prometheus."""

from __future__ import annotations

import time

import flask
import pytest
import requests
from google.protobuf import json_format
from seldon_core.proto import prediction_pb2

from experiment.prometheus_data import wait_for_scrape
from serving.mlflow_server import FEEDBACK_IDS_REMEMBERED, MLFlowServer, RecentIds
from tests.traffic import PREDICTION, metric_sum_by_predictor


def test_an_id_is_first_once_while_remembered_and_the_oldest_is_forgotten_first():
    ids = RecentIds(3)
    assert [ids.first(i) for i in ("a", "a", "b", "c")] == [True, False, True, True]
    assert ids.first("a") is False  # seen again: now the most recent, "b" the oldest
    assert ids.first("d") is True and len(ids) == 3  # bounded: "b" is forgotten ...
    assert ids.first("b") is True  # ... so it counts again, and "c" is forgotten in turn
    assert [ids.first(i) for i in ("a", "d", "b")] == [False, False, False] and ids.first("c") is True
    with pytest.raises(ValueError, match="at least 1"):
        RecentIds(0)


def feedback_message(reward: float, meta_puid: str = "") -> prediction_pb2.Feedback:
    message = {"request": PREDICTION, "response": {"data": {"ndarray": [5.0]}}, "reward": reward}
    if meta_puid:
        message["response"]["meta"] = {"puid": meta_puid}
    return json_format.ParseDict(message, prediction_pb2.Feedback())


def test_the_request_id_is_the_seldon_puid_header_else_the_messages_puid():
    server = MLFlowServer("models:/unused@a")  # first_feedback needs no model
    assert server.counted_feedback.size == FEEDBACK_IDS_REMEMBERED
    app = flask.Flask(__name__)
    with app.test_request_context(headers={"Seldon-Puid": "p-1"}):
        assert server.first_feedback(feedback_message(0.5)) is True
        assert server.first_feedback(feedback_message(0.5, meta_puid="other")) is False  # the header wins
        assert server.first_feedback(feedback_message(0.0)) is True  # not counted, not remembered
    with app.test_request_context(headers={"Seldon-Puid": "p-2"}):
        assert server.first_feedback(feedback_message(0.0)) is True
        assert server.first_feedback(feedback_message(0.7)) is True  # the corrected reward counts
    # without a header (straight to the model server): the response's meta.puid
    assert server.first_feedback(feedback_message(0.5, meta_puid="m-1")) is True
    assert server.first_feedback(feedback_message(0.5, meta_puid="m-1")) is False
    # no request id anywhere: every feedback counts, as in seldon-core
    assert all(server.first_feedback(feedback_message(0.5)) for _ in range(3))


@pytest.mark.stack
def test_the_same_puid_twice_counts_once_different_puids_count(stack):
    prom = stack.prometheus_url
    url = stack.predictor_urls["model-a"] + "/api/v1.0/feedback"
    direct = stack.urls["models"]["model-a"] + "/api/v1.0/feedback"  # past the gateway
    body = {"request": PREDICTION, "response": {"data": {"ndarray": [5.0]}}, "reward": 0.5}
    wait_for_scrape(prom, time.time())
    before = metric_sum_by_predictor(prom, "seldon_api_model_feedback_total")
    tag = f"{time.time_ns()}"  # ids no other test of the session sends
    sends = [(url, f"once-{tag}"), (url, f"once-{tag}"), (direct, f"once-{tag}"), (url, f"other-{tag}")]
    answers = [requests.post(u, json=body, headers={"Seldon-Puid": p}, timeout=10) for u, p in sends]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    repeat = [bool(a.json()["meta"].get("tags", {}).get("already_counted")) for a in answers]
    assert repeat == [False, True, True, False]
    # answered like the first: the node that served it (the replay reads the arm from it)
    assert all(a.json()["meta"]["requestPath"] == answers[0].json()["meta"]["requestPath"] for a in answers)
    wait_for_scrape(prom, time.time())
    after = metric_sum_by_predictor(prom, "seldon_api_model_feedback_total")
    assert after["model-a"] - before.get("model-a", 0) == 2
