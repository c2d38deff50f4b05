"""serving.endpoints.Endpoints: the URLs a client posts to, and the refusal when no stack runs."""

from __future__ import annotations

import pytest

from serving.endpoints import Endpoints
from serving.local import StackError, StackNotRunning


def test_urls_of_the_ingress_and_of_each_arm():
    where = Endpoints(
        gateway="ingress.example:443",
        namespace="ab",
        deployment="wines",
        predictors={"model-a": "127.0.0.1:9001", "model-b": "http://127.0.0.1:9002"},
        nodes={"model-a": "model-a", "model-b": "model-b"},
        scheme="https",
    )
    assert where.predictions_url == "https://ingress.example:443/seldon/ab/wines/api/v1.0/predictions"
    assert where.ingress_feedback_url == "https://ingress.example:443/seldon/ab/wines/api/v1.0/feedback"
    # an address without a scheme takes the endpoints' scheme; one with its own keeps it
    assert where.predictor_url("model-a") == "https://127.0.0.1:9001"
    assert where.feedback_url("model-b") == "http://127.0.0.1:9002/api/v1.0/feedback"
    assert where.predictor_predictions_url("model-b") == "http://127.0.0.1:9002/api/v1.0/predictions"
    with pytest.raises(KeyError, match="model-c.*model-a"):
        where.feedback_url("model-c")


def test_local_without_a_running_stack_is_one_clear_error(tmp_path):
    with pytest.raises(StackNotRunning, match="no local stack is running") as refused:
        Endpoints.local(tmp_path / "no-stack-here")
    assert isinstance(refused.value, StackError)
