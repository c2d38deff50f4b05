"""`python -m serving.local up serving/model-bandit.yaml` serves a learning bandit (a real stack).

Needs the local stack to start a router process for a ROUTER graph (``choose_ports`` with the
graph's servers, ``Supervisor`` running each of ``Deployment.servers``); skipped, naming that,
where serving/local does not do it yet.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import time

import pytest
import requests

from serving.client import feedback_message, prediction_request
from tests.conftest import REPO

BANDIT = REPO / "serving" / "model-bandit.yaml"


def _serves_routers() -> bool:
    from serving.local import supervisor

    return "servers" in inspect.signature(supervisor.choose_ports).parameters


pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        not _serves_routers(), reason="serving/local starts no router process for a ROUTER graph yet"
    ),
]


@pytest.fixture(scope="module")
def bandit_stack(trained_arms, tmp_path_factory):
    from serving.local import LocalStack

    running = LocalStack.up(BANDIT, port=0, state_dir=tmp_path_factory.mktemp("bandit-stack"), timeout=240)
    yield running
    running.down()


REWARD = {"model-a": 0.3, "model-b": 0.9}  # model-b always earns more: the router must move to it


def one(stack, session, features) -> str:
    """Predict through the ingress, send the arm's reward back with the response; the arm."""
    from training.data import FEATURES

    request = prediction_request(features, FEATURES)
    response = session.post(f"{stack.ingress_url}/predictions", json=request, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    (arm,) = body["meta"]["requestPath"]
    assert body["meta"]["routing"] == {"router": ["model-a", "model-b"].index(arm), arm: -1}
    message = feedback_message(request, body, REWARD[arm])
    sent = session.post(f"{stack.ingress_url}/feedback", json=message, timeout=30)
    assert sent.status_code == 200, sent.text
    return arm


def test_the_bandit_learns_and_keeps_what_it_learned_across_a_kill_9(bandit_stack):
    import numpy as np

    state_file = bandit_stack.state_dir / "routers" / "router.json"
    features = np.array([[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]])
    with requests.Session() as session:
        arms = [one(bandit_stack, session, features) for _ in range(150)]
        assert arms[-50:].count("model-b") >= 45, arms
        state = json.loads(state_file.read_text())
        assert state["n"] == [arms.count("model-a"), arms.count("model-b")]  # each reward once
        pid = bandit_stack.state["processes"]["bandit"]["pid"]
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            process = bandit_stack.state["processes"]["bandit"]
            if process["pid"] != pid and process["ready"]:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the router was not restarted")
        after = [one(bandit_stack, session, features) for _ in range(20)]
    again = json.loads(state_file.read_text())
    assert sum(again["n"]) == 170 and again["starts"] == state["starts"] + 1
    assert after.count("model-b") >= 18, after  # it still knows: no second exploration
