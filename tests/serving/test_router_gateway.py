"""The gateway serving a ROUTER graph, against real seldon-core microservices on loopback.

No stack and no MLflow: the router is the project's ThompsonSampling (serving.routers), the two
arms are seldon-core components defined below (``Arm``: a constant prediction), each run by
``serving.microservice`` in its own process, and the gateway is ``python -m serving.gateway``.
A second predictor ("echo", traffic 0, reached on its own port) has a router that routes each
request to the number in its first feature, to drive the executor's odd cases (-1, -2, out of
range) through real HTTP.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from seldon_core.flask_utils import SeldonMicroserviceException
from seldon_core.utils import construct_response_json

from serving.gateway import GatewayConfig, GraphError, feedback_route, parse_route
from serving.local import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.slow

IMAGE = "arm-image:test"
ARM_VALUES = {"model-a": 0.0, "model-b": 1.0}


class Arm:
    """A seldon-core component that predicts a constant (its ``value`` parameter)."""

    def __init__(self, value: float = 0.0):
        self.value = float(value)

    # as the project's model server (serving/mlflow_server.py): the raw request, checked here, so a
    # malformed one is a 400 (seldon-core's own parsing answers 500 to a ragged ndarray)
    def predict_raw(self, request):
        data = request.get("data") if isinstance(request, dict) else None
        rows = data.get("ndarray") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise SeldonMicroserviceException("expected data.ndarray: a list of rows", status_code=400)
        return construct_response_json(self, False, request, np.full((len(rows), 1), self.value))

    def send_feedback(self, features, feature_names, reward, truth, routing=None):
        return []


class EchoRouter:
    """A router that routes to the first feature of the request (to drive -1, -2, out of range)."""

    def route(self, features, feature_names):
        return int(np.asarray(features).ravel()[0])

    def send_feedback(self, features, feature_names, reward, truth, routing=None):
        return []


def manifest(folder: Path) -> Path:
    def router_predictor(name, traffic, router, children, cls):
        return {
            "name": name,
            "traffic": traffic,
            "svcOrchSpec": {"env": [{"name": "SELDON_ENABLE_ROUTING_INJECTION", "value": "true"}]},
            "graph": {
                "name": router,
                "type": "ROUTER",
                "children": [
                    {
                        "name": c,
                        "type": "MODEL",
                        "implementation": "MLFLOW_SERVER",
                        "modelUri": f"models:/x@{c}",
                    }
                    for c in children
                ],
            },
            "componentSpecs": [
                {
                    "spec": {
                        "containers": [
                            {"name": router, "command": ["python", "-m", "serving.microservice", cls]}
                        ]
                    }
                }
            ],
        }

    document = {
        "apiVersion": "machinelearning.seldon.io/v1",
        "kind": "SeldonDeployment",
        "metadata": {"name": "bandit-test", "namespace": "default"},
        "spec": {
            "predictors": [
                router_predictor(
                    "bandit", 100, "router", ["model-a", "model-b"], "serving.routers.ThompsonSampling"
                ),
                # its router process is EchoRouter (the gateway's upstream), whatever the command says
                router_predictor(
                    "echo", 0, "echo-router", ["echo-a", "echo-b"], "serving.routers.EpsilonGreedy"
                ),
            ]
        },
    }
    path = folder / "bandit.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class Graph:
    """The processes: router, echo router, two arms, gateway; each a process group of its own."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state_dir = folder / "router-state"
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {n: (free_port(), free_port()) for n in ("router", "echo-router", "model-a", "model-b")}
        self.router_env = dict(
            PREDICTIVE_UNIT_ID="router",
            PREDICTIVE_UNIT_PARAMETERS=json.dumps(
                [
                    {"name": "n_branches", "type": "INT", "value": "2"},
                    {"name": "branch_names", "type": "STRING", "value": "model-a:model-b"},
                    {"name": "seed", "type": "INT", "value": "1"},
                ]
            ),
            ROUTER_STATE_DIR=str(self.state_dir),
        )
        self.start("router", "serving.routers.ThompsonSampling", **self.router_env)
        self.start(
            "echo-router", "tests.serving.test_router_gateway.EchoRouter", PREDICTIVE_UNIT_ID="echo-router"
        )
        for arm, value in ARM_VALUES.items():
            params = json.dumps([{"name": "value", "type": "FLOAT", "value": str(value)}])
            self.start(
                arm,
                "tests.serving.test_router_gateway.Arm",
                PREDICTIVE_UNIT_ID=arm,
                PREDICTIVE_UNIT_PARAMETERS=params,
            )
        url = {n: f"http://127.0.0.1:{http}" for n, (http, _) in self.ports.items()}
        self.urls = url
        self.config = GatewayConfig(
            manifest=str(manifest(folder)),
            upstreams={
                "bandit": url["router"],
                "model-a": url["model-a"],
                "model-b": url["model-b"],
                "echo": url["echo-router"],
                "echo-a": url["model-a"],
                "echo-b": url["model-b"],
            },
            predictor_ports={"bandit": free_port(), "echo": free_port()},
            ingress_port=free_port(),
        )
        config_file = folder / "gateway.json"
        self.config.write(config_file)
        self.spawn("gateway", [sys.executable, "-m", "serving.gateway", "--config", str(config_file)], {})
        for name in self.ports:
            self.wait(f"{url[name]}/health/ping")
        self.wait(f"http://127.0.0.1:{self.config.ingress_port}/ready")
        self.ingress = f"http://127.0.0.1:{self.config.ingress_port}/seldon/default/bandit-test/api/v1.0"
        self.echo = f"http://127.0.0.1:{self.config.predictor_ports['echo']}/api/v1.0"

    def start(self, name: str, cls: str, **env) -> None:
        http, metrics = self.ports[name]
        env = {
            "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http),
            "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics),
            "PREDICTIVE_UNIT_IMAGE": IMAGE,
            "GUNICORN_WORKERS": "1",
            "GUNICORN_THREADS": "4",
            "SELDON_LOG_LEVEL": "WARNING",
            **env,
        }
        self.spawn(name, [sys.executable, "-m", "serving.microservice", cls], env)

    def spawn(self, name: str, argv: list[str], env: dict) -> None:
        with open(self.folder / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv,
                env={**os.environ, "PYTHONPATH": str(REPO), **env},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )

    def wait(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} not ready in {timeout} s; logs in {self.folder}")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def restart_router(self) -> None:
        self.kill("router")
        self.start("router", "serving.routers.ThompsonSampling", **self.router_env)
        self.wait(f"{self.urls['router']}/health/ping")

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def state(self) -> dict:
        return json.loads((self.state_dir / "router.json").read_text())

    def rewards(self) -> list[int]:
        """Rewards per branch in the router's state file ([0, 0] before the first one)."""
        path = self.state_dir / "router.json"
        return json.loads(path.read_text())["n"] if path.exists() else [0, 0]

    def metrics(self, name: str) -> dict:
        text = requests.get(f"http://127.0.0.1:{self.ports[name][1]}/metrics", timeout=5).text
        values: dict = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if "branch" in s.labels and s.labels.get("method") != "feedback":
                    continue  # the router's gauges are refreshed by feedback only
                key = (s.name, s.labels.get("branch", ""))
                values[key] = values.get(key, 0) + s.value
        return values

    def child_feedback(self) -> dict[str, float]:
        return {arm: self.metrics(arm).get(("seldon_api_model_feedback_total", ""), 0) for arm in ARM_VALUES}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    running = Graph(tmp_path_factory.mktemp("graph"))
    yield running
    running.stop()


ROW = {"data": {"names": ["x"], "ndarray": [[0.5]]}}


def predict(url: str, body=ROW) -> requests.Response:
    return requests.post(f"{url}/predictions", json=body, timeout=10)


def feedback(url: str, response: dict, reward: float = 0.8, request=ROW) -> requests.Response:
    return requests.post(
        f"{url}/feedback", json={"request": request, "response": response, "reward": reward}, timeout=10
    )


# ---------------------------------------------------------------- route parsing (no HTTP)
@pytest.mark.parametrize(
    "answer, route",
    [
        ({"data": {"names": [], "ndarray": [[1]]}}, 1),
        ({"data": {"ndarray": [0, 1]}}, 0),
        ({"data": {"ndarray": [[1.9]]}}, 1),  # Go's int(float64) truncates
        ({"data": {"tensor": {"shape": [1, 1], "values": [1]}}}, 1),
        ({"data": {"tftensor": {"dtype": "DT_INT32", "intVal": [1]}}}, 1),
        ({"data": {"strData": "x"}}, -1),
        ({"meta": {}}, -1),
        ([2, 0], 2),
    ],
)
def test_a_route_is_read_as_the_executor_reads_it(answer, route):
    assert parse_route(json.dumps(answer).encode()) == route


@pytest.mark.parametrize(
    "answer",
    [b"not json", b"[]", b'{"data": {"ndarray": []}}', b'{"data": {"ndarray": [[]]}}', b"[1.5]", b'"1"',
     b'{"data": {"ndarray": [["a"]]}}', b"[true]"],
)  # fmt: skip
def test_an_answer_with_no_route_is_a_502_where_the_executor_panics(answer):
    with pytest.raises(GraphError) as error:
        parse_route(answer)
    assert error.value.status == 502


# ---------------------------------------------------------------- predictions
def test_each_prediction_is_served_by_the_child_the_router_chose_and_names_it(graph):
    seen = set()
    for _ in range(40):
        answer = predict(graph.ingress)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        route = body["meta"]["routing"]["router"]
        arm = ["model-a", "model-b"][route]
        assert body["meta"]["routing"] == {"router": route, arm: -1}
        assert body["meta"]["requestPath"] == {arm: IMAGE}  # the child's; the router's reply is dropped
        assert body["data"]["ndarray"] == [[ARM_VALUES[arm]]]
        seen.add(arm)
    assert seen == set(ARM_VALUES)  # an untrained Thompson router tries both


def test_route_minus_one_runs_every_child_and_minus_two_returns_the_request(graph):
    everyone = predict(graph.echo, {"data": {"ndarray": [[-1]]}})
    assert everyone.status_code == 200, everyone.text
    assert everyone.json()["meta"]["routing"] == {"echo-router": -1, "echo-a": -1, "echo-b": -1}
    assert everyone.json()["data"]["ndarray"] == [[ARM_VALUES["model-a"]]]  # the first child's
    request = {"data": {"ndarray": [[-2]]}, "meta": {}}
    back = predict(graph.echo, request)
    assert back.status_code == 200 and back.json()["data"] == request["data"]
    assert back.json()["meta"]["routing"] == {"echo-router": -2}


@pytest.mark.parametrize("route", [2, 7, -3])
def test_a_route_outside_the_children_is_a_502_naming_it_not_a_crash(graph, route):
    answer = predict(graph.echo, {"data": {"ndarray": [[route]]}})
    assert answer.status_code == 502, answer.text
    status = answer.json()["status"]
    assert f"route {route}" in status["info"] and status["reason"] == "BAD_ROUTE"
    assert "the router's answer is at fault" in status["info"]


# ---------------------------------------------------------------- feedback
def test_a_feedback_reaches_the_router_once_and_the_child_that_served(graph):
    before, before_children = graph.rewards(), graph.child_feedback()
    body = predict(graph.ingress).json()
    route = body["meta"]["routing"]["router"]
    answer = feedback(graph.ingress, body, reward=0.7)
    assert answer.status_code == 200, answer.text
    after = graph.rewards()
    assert [a - b for a, b in zip(after, before, strict=True)] == [int(route == 0), int(route == 1)]
    arm = ["model-a", "model-b"][route]
    children = graph.child_feedback()
    assert {k: children[k] - before_children[k] for k in children} == {a: float(a == arm) for a in ARM_VALUES}
    gauges = graph.metrics("router")
    assert gauges[("router_branch_feedback", arm)] == after[route]


def _forged(routing):
    return {"data": {"ndarray": [[0.0]]}, "meta": {"routing": routing}}


@pytest.mark.parametrize(
    "response, says",
    [
        (
            {"data": {"ndarray": [[0.0]]}, "meta": {}},
            "NO_ROUTING",
        ),  # injection off: 1.17.1 sends it to every child
        ({"data": {"ndarray": [[0.0]]}}, "NO_ROUTING"),
        (None, "NO_ROUTING"),
        (_forged({"other-router": 0}), "NO_ROUTING"),
        (_forged({"router": -2}), "BAD_ROUTING"),  # 1.17.1 panics
        (_forged({"router": 2}), "BAD_ROUTING"),
        (_forged({"router": 0.5}), "BAD_ROUTING"),
        (_forged({"router": "0"}), "BAD_ROUTING"),
        (_forged({"router": True}), "BAD_ROUTING"),
        (_forged({"router": -1}), "ROUTER_BAD_FEEDBACK"),  # every child ran: this router cannot learn from it
        (_forged({"router": 0}) | {"reward": 2.0}, "ROUTER_BAD_FEEDBACK"),
    ],
)
def test_feedback_with_missing_or_forged_routing_is_a_400_and_reaches_no_one(graph, response, says):
    before, children = graph.rewards(), graph.child_feedback()
    reward = response.pop("reward", 0.5) if isinstance(response, dict) else 0.5
    answer = feedback(graph.ingress, response, reward=reward)
    assert answer.status_code == 400, answer.text
    assert answer.json()["status"]["reason"] == says, answer.text
    assert graph.rewards() == before and graph.child_feedback() == children


def test_feedback_route_is_read_from_the_routing_of_this_router_only(tmp_path):
    from serving import deployment as sdep

    predictor = sdep.load(manifest(tmp_path)).predictor("bandit")
    assert (
        feedback_route(b'{"response": {"meta": {"routing": {"router": 1, "model-b": -1}}}}', predictor) == 1
    )
    for body in (b"[1]", b"nope", b'{"response": []}', b'{"response": {"meta": {"routing": []}}}'):
        with pytest.raises(GraphError) as error:
            feedback_route(body, predictor)
        assert error.value.status == 400


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
ROUTING = st.dictionaries(st.sampled_from(["router", "model-a", "x"]), JSON, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    routing=ROUTING | JSON,
    reward=JSON,
    request=st.none() | JSON,
    where=st.sampled_from(["ingress", "echo"]),
)
def test_fuzzed_feedback_and_predictions_never_get_a_5xx(graph, routing, reward, request, where):
    url = graph.ingress if where == "ingress" else graph.echo
    body = {"request": request, "response": {"meta": {"routing": routing}}, "reward": reward}
    answer = requests.post(f"{url}/feedback", json=body, timeout=10)
    assert answer.status_code < 500, (body, answer.text)
    answer = requests.post(f"{graph.ingress}/predictions", json={"data": {"ndarray": request}}, timeout=10)
    assert answer.status_code < 500, (request, answer.text)


# ---------------------------------------------------------------- reliability
def test_every_reward_reaches_the_router_exactly_once_under_8_concurrent_clients(graph):
    before = np.array(graph.rewards())
    children = graph.child_feedback()
    rows = 400

    def one(i):
        body = predict(graph.ingress).json()
        return body["meta"]["routing"]["router"], feedback(
            graph.ingress, body, reward=0.1 + 0.8 * (i % 2)
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(rows)))
    assert all(code == 200 for _, code in results), results
    sent = np.bincount([route for route, _ in results], minlength=2)
    assert (np.array(graph.state()["n"]) - before).tolist() == sent.tolist()
    gauges = graph.metrics("router")
    assert [gauges[("router_branch_feedback", a)] for a in ARM_VALUES] == graph.state()["n"]
    now = graph.child_feedback()
    assert [now[a] - children[a] for a in ARM_VALUES] == sent.tolist()


def test_kill_9_of_the_router_under_load_keeps_what_it_learned(graph):
    for _ in range(20):  # something learned before the kill
        feedback(graph.ingress, predict(graph.ingress).json())
    learned = graph.state()
    accepted, refused = [], []
    stop = time.monotonic() + 6

    def client():
        while time.monotonic() < stop:
            answer = predict(graph.ingress)
            if answer.status_code != 200:
                refused.append(answer.status_code)
                continue
            body = answer.json()
            code = feedback(graph.ingress, body).status_code
            (accepted if code == 200 else refused).append(code)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        time.sleep(2)
        graph.restart_router()
        for f in futures:
            f.result()
    assert all(code in (502, 503, 504) for code in refused), refused  # the router down: never a 500
    state = graph.state()
    assert state["starts"] == learned["starts"] + 1
    total = sum(state["n"]) - sum(learned["n"])
    # every accepted reward is in the state; a feedback in flight at the kill may be saved unanswered
    assert len(accepted) <= total <= len(accepted) + 4, (len(accepted), total)
