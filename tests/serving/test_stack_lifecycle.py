"""`up`, `status` and `down` of a real local stack when one is already running, changed or orphaned.

One private stack (its own state folder, manifest copy and free ports) whose model-a serves
``models:/wines-classifier@lifecycle``, an alias of this module's own, so moving it disturbs no
other test. The tests run in file order: reuse, refusals, replace, a clean shutdown, orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from serving import deployment as sdep
from serving.local import LocalStack, StackError, StackNotRunning, free_port, stack_pids
from serving.local.reuse import differences
from tests.conftest import MANIFEST
from tests.traffic import PREDICTION, send_many
from training.tracking import MODEL_NAME, tracking_uri

pytestmark = pytest.mark.stack

ALIAS = "lifecycle"
DOWN = "python -m serving.local down"


@pytest.fixture(scope="module")
def lifecycle(trained_arms, tmp_path_factory):
    """(manifest, state dir, ingress port) of a stack started with an explicit port."""
    folder = tmp_path_factory.mktemp("lifecycle")
    client = MlflowClient(tracking_uri())
    client.set_registered_model_alias(MODEL_NAME, ALIAS, trained_arms["a"].version)
    manifest = folder / "model-a-b.yaml"
    manifest.write_text(
        MANIFEST.read_text().replace(f"models:/{MODEL_NAME}@a", f"models:/{MODEL_NAME}@{ALIAS}")
    )
    state, port = folder / "state", free_port()
    LocalStack.up(manifest, port=port, state_dir=state, timeout=240)
    yield manifest, state, port
    LocalStack(state).down()
    client.delete_registered_model_alias(MODEL_NAME, ALIAS)
    assert stack_pids(state) == []


def cli(state, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.local", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_up_again_with_the_same_everything_says_already_running(lifecycle, capsys):
    manifest, state, port = lifecycle
    pid = LocalStack(state).state["supervisor"]
    for asked in (None, port):
        again = LocalStack.up(manifest, port=asked, state_dir=state, timeout=60)
        assert again.reused and again.state["supervisor"] == pid
        assert "already running" in capsys.readouterr().out
    # the served copy is the given file's content, beside the state; the given file is as it was
    assert again.manifest_path == state.resolve() / "manifest.yaml"
    assert again.manifest_path.read_bytes() == manifest.read_bytes()
    command = cli(state, "up", str(manifest))
    assert command.returncode == 0 and "already running" in command.stdout


def test_up_on_another_port_refuses_and_names_the_command(lifecycle):
    manifest, state, port = lifecycle
    pid = LocalStack(state).state["supervisor"]
    for asked in (0, free_port()):  # `--port 0` never silently returns a stack on another port
        with pytest.raises(StackError, match=f"listens on port {port}") as refused:
            LocalStack.up(manifest, port=asked, state_dir=state, timeout=60)
        assert DOWN in str(refused.value) and "replace" in str(refused.value)
    command = cli(state, "up", str(manifest), "--port", "0")
    assert command.returncode == 1 and DOWN in command.stderr and "--replace" in command.stderr
    assert LocalStack(state).state["supervisor"] == pid  # refused: the running stack is untouched


def test_up_with_another_manifest_or_store_refuses(lifecycle, tmp_path):
    manifest, state, _ = lifecycle
    other = tmp_path / "other-split.yaml"
    other.write_text(manifest.read_text())
    sdep.set_traffic(other, {"model-a": 80, "model-b": 20})
    with pytest.raises(StackError, match="content differs") as refused:
        LocalStack.up(other, state_dir=state, timeout=60)
    assert DOWN in str(refused.value)

    stack = LocalStack(state)
    models = stack.plan.models
    assert differences(
        stack.plan, stack.manifest_path, manifest, "sqlite:////elsewhere/mlflow.db", models, None
    ) == [f"it reads the tracking store {tracking_uri()}, not sqlite:////elsewhere/mlflow.db"]
    assert differences(stack.plan, stack.manifest_path, manifest, tracking_uri(), models, None) == []
    # Prometheus's scrape interval is part of what was asked for (the notebook asks for 1 s)
    assert stack.scrape_interval == 2
    assert differences(stack.plan, stack.manifest_path, manifest, tracking_uri(), models, None, 1) == [
        "its Prometheus scrapes every 2 s, and 1 s was asked for"
    ]
    with pytest.raises(StackError, match="scrapes every 2 s"):
        LocalStack.up(manifest, state_dir=state, timeout=60, scrape_interval=1)


def test_a_traffic_edit_changes_only_the_working_copy_and_up_then_refuses(lifecycle):
    manifest, state, _ = lifecycle
    stack, given = LocalStack(state), manifest.read_bytes()
    try:
        sdep.set_traffic(stack.manifest_path, {"model-a": 100, "model-b": 0})  # what promotion does
        assert stack.reload()["traffic"] == {"model-a": 100, "model-b": 0}
        assert {r.arm for r in send_many(f"{stack.ingress_url}/predictions", 20)} == {"model-a"}
        assert manifest.read_bytes() == given
        # the stack no longer serves what the given file says: reusing it would be a lie
        with pytest.raises(StackError, match="traffic split changed"):
            LocalStack.up(manifest, state_dir=state, timeout=60)
    finally:
        sdep.set_traffic(stack.manifest_path, {"model-a": 50, "model-b": 50})
        stack.reload()


def test_a_moved_alias_refuses_then_replace_serves_the_new_version(lifecycle, trained_arms):
    manifest, state, port = lifecycle
    old = LocalStack(state)
    pid, a, b = old.state["supervisor"], trained_arms["a"].version, trained_arms["b"].version
    assert old.state["models"]["model-a"] == f"{MODEL_NAME} version {a}"
    MlflowClient(tracking_uri()).set_registered_model_alias(MODEL_NAME, ALIAS, b)  # as a retraining would

    with pytest.raises(StackError, match=f"serves {MODEL_NAME} version {a}, but .*@{ALIAS} now names") as e:
        LocalStack.up(manifest, port=port, state_dir=state, timeout=60)
    assert DOWN in str(e.value)
    # the refused stack still serves the version it loaded, also from model-a's own endpoint
    before = send_many(old.predictor_urls["model-a"] + "/api/v1.0/predictions", 1)[0].body

    new = LocalStack.up(manifest, port=port, state_dir=state, timeout=240, replace=True)
    assert not new.reused and new.state["supervisor"] != pid
    assert new.state["models"]["model-a"] == f"{MODEL_NAME} version {b}"
    served = {
        name: send_many(url + "/api/v1.0/predictions", 1, body=PREDICTION)[0].body["data"]["ndarray"]
        for name, url in new.predictor_urls.items()
    }
    assert served["model-a"] == served["model-b"]  # model-a now serves @b's version
    assert before["data"]["ndarray"] != served["model-a"]


def test_a_normal_down_leaves_no_traceback_in_any_log(lifecycle):
    manifest, state, port = lifecycle
    stack = LocalStack(state)
    answers = send_many(f"{stack.ingress_url}/predictions", 40, concurrency=4)
    assert {r.status for r in answers} == {200}
    feedback = {"request": PREDICTION, "response": answers[0].body, "reward": 0.5}
    for url in stack.predictor_urls.values():
        assert {r.status for r in send_many(f"{url}/api/v1.0/feedback", 5, body=feedback)} == {200}
    stopped = stack.down()
    assert stopped and stack_pids(state) == []
    logs = sorted((state / "logs").glob("*.log")) + [state / "supervisor.log"]
    assert {log.stem for log in logs} >= {"model-a", "model-b", "gateway", "prometheus", "supervisor"}
    # these logs hold two shutdowns: the replaced stack's and this one
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Exception" not in text, f"{log.name}:\n{text[-3000:]}"
    for name in ("model-a", "model-b"):  # they stopped gracefully (SIGTERM), not by SIGKILL after the grace
        assert "Worker exiting" in (state / "logs" / f"{name}.log").read_text()
    with pytest.raises(StackNotRunning, match="python -m serving.local up"):
        stack.reload()


def test_status_reports_the_orphans_of_a_killed_supervisor_and_down_stops_them(lifecycle):
    manifest, state, port = lifecycle
    stack = LocalStack.up(manifest, port=port, state_dir=state, timeout=240)
    children = {name: proc["pid"] for name, proc in stack.state["processes"].items()}
    os.kill(stack.state["supervisor"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stack.running():
        assert time.monotonic() < deadline
        time.sleep(0.1)

    status = stack.status()
    assert not status["running"]
    orphans = {o["pid"]: o for o in status["orphans"]}
    assert set(children.values()) <= set(orphans)  # every process group leader still runs
    assert {orphans[pid]["role"] for pid in children.values()} == set(children)
    assert any(f"127.0.0.1:{port}" in o["listening"] for o in orphans.values())  # still serving
    assert {r.status for r in send_many(f"{stack.ingress_url}/predictions", 5)} == {200}
    shown = cli(state, "status")
    assert "supervisor is gone" in shown.stdout and DOWN in shown.stdout and "make down" in shown.stdout
    with pytest.raises(StackError, match="still running"):
        LocalStack.up(manifest, port=port, state_dir=state, timeout=60)

    down = cli(state, "down")
    assert down.returncode == 0 and down.stdout.startswith("stopped ")
    assert stack_pids(state) == [] and cli(state, "status").stdout == "no local stack is running\n"
