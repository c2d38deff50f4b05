"""The fast paths say exactly what the slow ones said.

- feedback.py posts the same JSON that SeldonClient builds (it only swaps the transport);
- the model server's direct scikit-learn call answers exactly what MLflow's ``pyfunc.predict``
  answers, for rows in any column order, and falls back to pyfunc for models it cannot vouch for.
"""

from __future__ import annotations

import numpy as np
import pytest
from seldon_core.proto import prediction_pb2
from seldon_core.utils import (
    array_to_grpc_datadef,
    feedback_to_json,
    json_to_feedback,
    json_to_seldon_message,
    seldon_message_to_json,
)

import feedback
from serving import client
from serving.mlflow_server import MLFlowServer
from training.data import FEATURES, TARGET


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return feedback.holdout_rows(limit=200)[FEATURES].to_numpy(dtype="float64")


def test_the_prediction_request_is_the_one_seldon_client_builds(rows):
    for features in (rows[i : i + 1] for i in range(0, len(rows), 20)):
        # what SeldonClient.predict(data=features, names=FEATURES, payload_type="ndarray") sends
        meta = prediction_pb2.Meta()
        expected = seldon_message_to_json(
            prediction_pb2.SeldonMessage(
                data=array_to_grpc_datadef("ndarray", features, names=FEATURES), meta=meta
            )
        )
        assert client.prediction_request(features, FEATURES) == expected


def test_the_feedback_is_the_one_seldon_client_builds(rows):
    request = client.prediction_request(rows[:1], FEATURES)
    response = {
        "data": {"names": ["t:0"], "ndarray": [5.57]},
        "meta": {"requestPath": {"model-a": "img:tag"}, "puid": "abc"},
    }
    # what SeldonClient.feedback(prediction_request, prediction_response, reward) sends (proto client)
    proto = prediction_pb2.Feedback(
        request=json_to_seldon_message(request),
        response=json_to_seldon_message(response),
        reward=0.61,
    )
    ours = client.feedback_message(request, response, 0.61)
    # the server parses both into the same Feedback message
    assert json_to_feedback(ours) == json_to_feedback(feedback_to_json(proto))


@pytest.fixture(scope="module")
def servers(trained_arms) -> dict[str, MLFlowServer]:
    loaded = {}
    for alias in trained_arms:
        server = MLFlowServer(f"models:/wines-classifier@{alias}")
        server.load()
        loaded[alias] = server
    return loaded


def test_the_direct_estimator_call_answers_what_pyfunc_answers(servers, rows):
    order = np.random.default_rng(0).permutation(len(FEATURES))
    shuffled = [FEATURES[i] for i in order]
    for server in servers.values():
        assert server._direct is not None, "a plain scikit-learn model should take the direct path"
        expected = np.asarray(
            server._model.predict(server.request_frame({"data": {"ndarray": rows.tolist()}})), dtype=float
        )
        for request in (
            {"data": {"ndarray": rows.tolist()}},
            {"data": {"names": FEATURES, "ndarray": rows.tolist()}},
            {"data": {"names": shuffled, "ndarray": rows[:, order].tolist()}},  # columns by name, any order
            {"data": {"tensor": {"shape": list(rows.shape), "values": rows.ravel().tolist()}}},
        ):
            answer = server.predict_raw(request)["data"]
            got = np.asarray(
                answer["ndarray"] if "ndarray" in answer else answer["tensor"]["values"], dtype=float
            )
            np.testing.assert_array_equal(got, expected)


def test_a_model_the_direct_path_cannot_vouch_for_goes_through_pyfunc(servers, rows):
    server = servers["a"]
    fallback = MLFlowServer(server.model_uri)
    fallback.load()
    fallback._direct = None  # as for a non-sklearn flavor or a non-double signature
    request = {"data": {"names": FEATURES, "ndarray": rows[:5].tolist()}}
    assert fallback.predict_raw(request)["data"] == server.predict_raw(request)["data"]
    assert TARGET not in FEATURES
