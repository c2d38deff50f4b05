"""serving/model-shadow.yaml: the champion serves, the challenger is a logged shadow.

Validated like the A/B manifest: the project's schema and checks (serving.deployment.load) and
Seldon's v1.17.1 CRD. The operator's admission webhook rules for shadows (``checkTraffic`` and
``validateShadow`` in operator/apis/machinelearning.seldon.io/v1/seldondeployment_webhook.go) are
written out below as the reference the local checks (serving/deployment.py) match.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serving import deployment as sdep
from serving.request_logger import RequestLogger, local_sink_ports
from serving.request_logger.sink import DEFAULT_PORT

SHADOW = Path(__file__).resolve().parents[2] / "serving" / "model-shadow.yaml"
MANIFEST = yaml.safe_load(SHADOW.read_text())


def webhook_errors(manifest: dict) -> list[str]:
    """The v1.17.1 webhook's shadow and traffic rules (checkTraffic, validateShadow), as in Go."""
    predictors = manifest["spec"]["predictors"]
    errors, total, shadows = [], 0, 0
    for p in predictors:
        traffic = p.get("traffic", 0)  # no default in the operator: absent is 0
        if p.get("shadow"):
            shadows += 1
            if shadows > 1:
                errors.append("Multiple shadows are not allowed")
            if not 0 <= traffic <= 100:
                errors.append("shadow traffic is illegal, the traffic number should be between [0, 100]")
        else:
            total += traffic
    if total != 100 and len(predictors) - shadows > 1:
        errors.append("Traffic must sum to 100 for multiple predictors")
    if 0 < total < 100 and len(predictors) == 1:
        errors.append("Traffic must sum be 100 for a single predictor when set")
    if len(predictors) == 1 and predictors[0].get("shadow"):
        errors.append("Shadow can not exist as only predictor")
    return errors


def edited(change) -> dict:
    manifest = copy.deepcopy(MANIFEST)
    change(manifest)
    return manifest


def predictor(i):
    return lambda m: m["spec"]["predictors"][i]


def test_the_shadow_manifest_loads_with_the_projects_checks():
    deployment = sdep.load(SHADOW)
    assert deployment.name == "wines-classifier"
    assert deployment.traffic == {"model-b": 100, "model-a": 0}
    assert [p.model_uri for p in deployment.predictors] == [
        "models:/wines-classifier@b",
        "models:/wines-classifier@a",
    ]
    items = {p["name"]: p for p in MANIFEST["spec"]["predictors"]}
    assert items["model-a"]["shadow"] is True and not items["model-b"].get("shadow")
    assert webhook_errors(MANIFEST) == []


def test_the_shadow_manifest_matches_the_v1_17_1_crd(crd):
    sdep.load(SHADOW, crd=crd)  # raises DeploymentError naming the field otherwise
    assert sdep.validate_schema(MANIFEST, crd) == []


def test_both_nodes_log_everything_to_the_local_sink():
    assert local_sink_ports(MANIFEST) == {DEFAULT_PORT}
    loggers = RequestLogger.for_manifest(MANIFEST)
    assert sorted(loggers) == ["model-a", "model-b"]  # one per predictor, as one per executor
    for name, log in loggers.items():
        assert log.spec.mode == "all" and log.url == f"http://127.0.0.1:{DEFAULT_PORT}/"
        assert (log.node, log.predictor, log.deployment, log.namespace) == (
            name,
            name,
            "wines-classifier",
            "default",
        )
        assert log.protocol == "seldon"


# ---------------------------------------------------------------- the webhook's rules, written out
def test_the_reference_rules_are_the_webhooks():
    two_shadows = edited(lambda m: predictor(0)(m).update(shadow=True))
    assert webhook_errors(two_shadows) == ["Multiple shadows are not allowed"]
    lone_shadow = edited(lambda m: m["spec"].update(predictors=[m["spec"]["predictors"][1]]))
    assert webhook_errors(lone_shadow) == ["Shadow can not exist as only predictor"]
    # one main + one shadow: the main's traffic is not checked, the shadow's may be 0..100
    assert webhook_errors(edited(lambda m: predictor(0)(m).pop("traffic"))) == []
    assert webhook_errors(edited(lambda m: predictor(1)(m).update(traffic=100))) == []


def test_the_predictor_knows_it_is_a_shadow():
    deployment = sdep.load(SHADOW)
    assert deployment.predictor("model-a").shadow is True
    assert deployment.predictor("model-b").shadow is False


def test_a_shadow_mirroring_100_percent_is_accepted():
    manifest = edited(lambda m: predictor(1)(m).update(traffic=100))
    assert webhook_errors(manifest) == []
    assert sdep.parse(manifest).traffic["model-a"] == 100


def test_a_lone_main_without_traffic_beside_a_shadow_is_accepted():
    manifest = edited(lambda m: predictor(0)(m).pop("traffic"))
    assert webhook_errors(manifest) == []
    assert sdep.parse(manifest).traffic["model-b"] == 100  # as for a lone predictor: every caller


def test_two_shadows_are_refused():
    manifest = edited(lambda m: m["spec"]["predictors"].append(_third_shadow(m)))
    assert webhook_errors(manifest) == ["Multiple shadows are not allowed"]
    with pytest.raises(sdep.DeploymentError, match="shadow"):
        sdep.parse(manifest)


def test_a_shadow_alone_is_refused():
    manifest = edited(lambda m: m["spec"].update(predictors=[m["spec"]["predictors"][1]]))
    predictor(0)(manifest).pop("traffic")
    assert webhook_errors(manifest) == ["Shadow can not exist as only predictor"]
    with pytest.raises(sdep.DeploymentError, match="shadow"):
        sdep.parse(manifest)


def _third_shadow(m: dict) -> dict:
    third = copy.deepcopy(m["spec"]["predictors"][1])
    third["name"] = third["graph"]["name"] = third["componentSpecs"][0]["spec"]["containers"][0]["name"] = (
        "model-c"
    )
    return third


# ----------------------------------------------------------------- the manifest on the local stack
@pytest.fixture(scope="module")
def shadow_stack(trained_arms, tmp_path_factory):
    """serving/model-shadow.yaml on the real local stack, its logger URLs moved to a free port
    (the committed 8004 may be taken on a test machine); stopped by pid at the end."""
    from serving.local import LocalStack, free_port

    port = free_port()
    manifest = copy.deepcopy(MANIFEST)
    for item in manifest["spec"]["predictors"]:
        item["graph"]["logger"]["url"] = f"http://127.0.0.1:{port}/"
    path = tmp_path_factory.mktemp("shadow") / "model-shadow.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    state_dir = tmp_path_factory.mktemp("shadow-stack")
    stack = LocalStack.up(path, port=0, state_dir=state_dir, timeout=240)
    yield stack, state_dir
    stack.down()


def predict(stack, n: int) -> list[tuple[str, dict]]:
    import uuid

    import requests

    from tests.traffic import PREDICTION

    answers = []
    with requests.Session() as session:
        for _ in range(n):
            puid = str(uuid.uuid4())  # as the replay does: the only way the two executors share an id
            r = session.post(
                stack.ingress_url + "/predictions",
                json=PREDICTION,
                headers={"Seldon-Puid": puid},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            answers.append((puid, r.json()))
    return answers


@pytest.mark.stack
def test_callers_are_answered_by_the_champion_only(shadow_stack):
    stack, _ = shadow_stack
    answers = predict(stack, 20)
    assert {next(iter(body["meta"]["requestPath"])) for _, body in answers} == {"model-b"}


@pytest.mark.stack
def test_the_shadow_answers_every_request_and_the_logged_events_pair_up(shadow_stack):
    import time

    import requests

    from experiment import paired
    from serving.request_logger import read_events

    stack, state_dir = shadow_stack
    answers = predict(stack, 30)
    sent = {puid for puid, _ in answers}
    folder = state_dir / "request-logs"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until both responses of every request sent here arrived
        events = read_events(folder) if folder.is_dir() else []
        if len(
            {(e["endpoint"], e["requestid"]) for e in events if e["kind"] == "response"}
            & {(endpoint, puid) for endpoint in ("model-b", "model-a") for puid in sent}
        ) == 2 * len(sent):
            break
        time.sleep(0.2)
    pairs = paired.pair_events(folder, main="model-b", shadow="model-a")
    assert sent <= set(pairs.frame.index)
    # the shadow's answers are the challenger's own (its graph node in meta.requestPath)
    shadow_paths = {
        next(iter(e["body"]["meta"]["requestPath"]))
        for e in read_events(folder)
        if e["endpoint"] == "model-a" and e["kind"] == "response" and e["requestid"] in sent
    }
    assert shadow_paths == {"model-a"}
    status = requests.get(f"http://{stack.gateway_endpoint}/admin/status", timeout=5).json()
    assert status["shadow"]["predictor"] == "model-a" and status["shadow"]["skipped"] == 0
    assert status["shadow"]["mirrored"] >= len(answers)
    assert all(not log["dropped"] for log in status["request_logger"].values()), status
    # the shadow has its own executor metrics, labelled as on a cluster (predictor_name only differs)
    metrics = requests.get(f"http://{stack.gateway_endpoint}/metrics", timeout=5).text
    assert (
        "seldon_api_executor_server_requests_seconds_count{" in metrics
        and 'predictor_name="model-a"' in metrics
    )


@pytest.mark.stack
def test_on_free_ports_the_sink_moves_too_and_the_stack_is_still_reused(shadow_stack):
    import requests

    from serving.local import LocalStack

    stack, state_dir = shadow_stack
    given, served = (yaml.safe_load(Path(p).read_text()) for p in (stack.plan.source, stack.manifest_path))
    (port,) = local_sink_ports(served)
    assert local_sink_ports(given) != {port}  # the working copy's logger URLs name a port of its own
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["out"] == str(
        state_dir / "request-logs"
    )
    again = LocalStack.up(stack.plan.source, port=0, state_dir=state_dir, timeout=60)
    assert again.reused  # the moved URLs are not taken for an edit of the working copy


@pytest.mark.stack
def test_the_replay_sends_a_puid_per_row_and_its_log_pairs_with_the_shadows_answers(shadow_stack, tmp_path):
    import time

    import feedback
    from experiment import paired
    from serving.endpoints import Endpoints
    from serving.request_logger import read_events

    stack, state_dir = shadow_stack
    rows = 60
    log_path = tmp_path / "replay.csv"
    result = feedback.replay(
        Endpoints.local(state_dir), limit=rows, concurrency=4, log_path=log_path, progress=False
    )
    log = result.log
    assert log["error"].fillna("").eq("").all(), log["error"].unique()
    assert set(log["arm"]) == {"model-b"} and log["puid"].nunique() == rows
    folder = state_dir / "request-logs"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answered = {
            e["requestid"]
            for e in read_events(folder)
            if e["endpoint"] == "model-a" and e["kind"] == "response"
        }
        if set(log["puid"]) <= answered:
            break
        time.sleep(0.2)
    pairs = paired.from_replay(log_path, folder, shadow="model-a")
    assert len(pairs) == rows and pairs.main_only == 0
    assert pairs.frame["reward_main"].tolist() == pytest.approx(
        log.set_index("puid").loc[pairs.frame.index, "reward"].tolist()
    )
    test = paired.paired_test(pairs)
    assert test.n == rows and test.wins + test.losses + test.ties == rows


@pytest.mark.stack
def test_the_shadow_and_the_logging_run_in_sessions_of_their_own_niced(shadow_stack):
    """Their CPU comes from a scheduling group of their own, not from the share of the gateway and
    the champion's model server beside which they run (see serving.request_logger.offload.yield_cpu)."""
    import os

    import psutil

    from serving.request_logger.offload import NICENESS, SESSION_NICENESS

    stack, _ = shadow_stack
    processes = {name: p["pid"] for name, p in stack.status()["processes"].items()}
    gateway = psutil.Process(processes["gateway"])
    (logger_process,) = gateway.children()
    yielding = {"model-a": processes["model-a"], "request-logger": processes["request-logger"]}
    yielding["logger process"] = logger_process.pid
    for name, pid in yielding.items():
        assert os.getsid(pid) == pid and os.getsid(pid) != os.getsid(gateway.pid), name
        assert psutil.Process(pid).nice() == NICENESS, name
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():  # Linux with the autogroup scheduler
            assert autogroup.read_text().split()[-1] == str(SESSION_NICENESS), name
    for name in ("gateway", "model-b"):  # the callers' path: the stack's session, not niced
        assert psutil.Process(processes[name]).nice() == 0
        assert os.getsid(processes[name]) == os.getsid(gateway.pid)
