"""The README's "Using the pieces by hand" block, run as written, in a copy of the repository.

Each command of the block runs in bash (the virtualenv first on PATH, as after `source
.venv/bin/activate`), in a copy of the repository's files made into a fresh git checkout, and what
it claims to do is checked after it runs. At the end no file of the repository has changed
(`git status --porcelain` of the copy is empty): the reader's by-hand session edits nothing
committed. A command the test has no check for fails the test, so README and test move together.

The block's own lines give the copy its tracking store (`export MLFLOW_TRACKING_URI=...$PWD...`)
and its stack folder (`.stack/` of the copy). Ports: the block reads the ingress port from
``PORT`` (default 8003) and `mlflow ui` honours ``MLFLOW_PORT``; the test sets both to free ports,
so it never meets another stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import REPO

README = REPO / "README.md"
SECTION = "## Using the pieces by hand"
MODEL = "wines-classifier"
ASSIGNMENT = re.compile(r"^(export\s+)?[A-Z_][A-Z0-9_]*=\S*(\s+#.*)?$")


def by_hand_block(text: str | None = None) -> str:
    text = text or README.read_text()
    section = text.split(SECTION, 1)[1]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found, f"README.md: no ```bash block under {SECTION!r}"
    return found.group(1)


def commands(block: str) -> list[str]:
    """The block's commands, backslash-continued lines joined; blank lines and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def test_block_is_found_and_parsed():
    lines = commands(by_hand_block())
    assert lines[0].startswith("export MLFLOW_TRACKING_URI=")
    assert any(line.startswith("curl ") and "-d '{" in line for line in lines)  # continuation joined
    # nothing in the block names a committed file as something to edit
    assert not any("--manifest serving/" in line for line in lines)


# ------------------------------------------------------------------------------ the copy
def copy_of_repository(destination: Path) -> Path:
    """The repository's files (tracked, and new ones not ignored) as a fresh git checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO / name
        if source.is_file():  # a file deleted in the working tree is still in the index
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=destination, check=True)
    return destination


def environment() -> dict:
    from serving.local import free_ports

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # the block exports its own
    venv = Path(sys.executable).parent
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"  # as `source .venv/bin/activate` does
    env["VIRTUAL_ENV"] = str(venv.parent)
    port, ui_port = free_ports(2)
    env["PORT"], env["MLFLOW_PORT"] = str(port), str(ui_port)
    cached = REPO / "training" / "data" / "winequality-white.csv"
    if "WINE_QUALITY_CSV" not in env and cached.is_file():  # no second download
        env["WINE_QUALITY_CSV"] = str(cached)
    return env


class Session:
    """Runs the block's commands one by one in the copy, the block's assignments before each."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env, self.assignments = root, env, []
        self.facts: dict = {}  # what earlier checks learnt (the verdict, the winner)

    def script(self, command: str) -> str:
        return "\n".join(["set -euo pipefail", *self.assignments, command])

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", self.script(command)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def variable(self, name: str) -> str:
        return self.run(f'printf %s "${name}"').stdout

    @property
    def store(self) -> str:
        return self.variable("MLFLOW_TRACKING_URI")

    @property
    def port(self) -> int:
        return int(self.variable("PORT"))

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.store, registry_uri=self.store)

    def stack(self):
        from serving.local import LocalStack

        return LocalStack(self.root / ".stack")

    def predictors(self) -> list[dict]:
        return yaml.safe_load(self.stack().manifest_path.read_text())["spec"]["predictors"]

    def working_copy_traffic(self) -> dict[str, int]:
        return {p["name"]: p.get("traffic", 0) for p in self.predictors()}

    def alias_served_by(self, predictor: str) -> str:
        """``a`` for a predictor serving ``models:/wines-classifier@a``."""
        (uri,) = [p["graph"]["modelUri"] for p in self.predictors() if p["name"] == predictor]
        return uri.rsplit("@", 1)[1]

    def aliases(self) -> dict[str, str]:
        return dict(self.client().get_registered_model(MODEL).aliases)


def ok(result: subprocess.CompletedProcess, command: str) -> None:
    assert result.returncode == 0, (
        f"`{command}` exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )


# ------------------------------------------------------------------------------ the checks
def check_mlflow_run(session: Session, command: str, result) -> None:
    from training.arms import ARMS
    from training.tracking import EXPERIMENT

    ok(result, command)
    params = dict(re.findall(r"-P (\w+)=(\S+)", command))
    alias = params["alias"]
    assert {k: float(v) for k, v in params.items() if k != "alias"} == ARMS[alias], (
        "the README's parameters are not training/arms.py's"
    )
    client = session.client()
    version = client.get_model_version_by_alias(MODEL, alias)
    run = client.get_run(version.run_id)
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT  # not "Default"
    assert float(run.data.params["alpha"]) == ARMS[alias]["alpha"] and "rmse" in run.data.metrics


def check_mlflow_ui(session: Session, command: str) -> None:
    """Blocks until Ctrl-C: started in the background, asked what it shows, stopped by its group."""
    process = subprocess.Popen(
        ["bash", "-c", session.script("exec " + command)],
        cwd=session.root,
        env=session.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        process_group=0,
    )
    url = f"http://127.0.0.1:{session.env['MLFLOW_PORT']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (
                f"`{command}` exited {process.returncode}: {process.stderr.read()[-2000:]}"
            )
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"`{command}` did not answer on {url} within 120 s"
            time.sleep(0.5)
        model = requests.get(
            f"{url}/api/2.0/mlflow/registered-models/get", params={"name": MODEL}, timeout=10
        )
        assert {a["alias"] for a in model.json()["registered_model"]["aliases"]} >= {"a", "b"}
        experiment = requests.get(
            f"{url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": "wine-quality"},
            timeout=10,
        )
        assert experiment.ok, experiment.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # Ctrl-C, for the whole group (its workers)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def check_up(session: Session, command: str, result) -> None:
    ok(result, command)
    stack = session.stack()
    assert stack.running() and stack.state.get("ready")
    assert stack.gateway_endpoint == f"127.0.0.1:{session.port}"
    # it serves a working copy inside its state folder, never the file it was given
    assert stack.manifest_path.is_relative_to(session.root / ".stack")
    assert stack.manifest_path.read_text() == (session.root / "serving" / "model-a-b.yaml").read_text()
    assert session.working_copy_traffic() == {"model-a": 50, "model-b": 50}


def check_status(session: Session, command: str, result) -> None:
    ok(result, command)
    assert f"127.0.0.1:{session.port}" in result.stdout
    for predictor in ("model-a", "model-b"):
        assert predictor in result.stdout


def check_curl(session: Session, command: str, result) -> None:
    ok(result, command)
    answer = json.loads(result.stdout)
    assert len(answer["data"]["ndarray"]) == 1
    assert set(answer["meta"]["requestPath"]) <= {"model-a", "model-b"}  # the arm that answered


def check_feedback(session: Session, command: str, result) -> None:
    import pandas as pd

    from experiment.verdict import verdict
    from feedback import holdout_rows

    ok(result, command)
    logs = sorted((session.root / "runs").glob("feedback-arm*.csv"))
    assert len(logs) == 1, logs
    log = pd.read_csv(logs[0])
    assert len(log) == len(holdout_rows()) and (log["feedback_status"] == 200).all()
    session.facts["log"] = logs[0]
    session.facts["verdict"] = verdict(logs[0])


def check_report(session: Session, command: str, result) -> None:
    ok(result, command)
    assert session.facts["log"].name in result.stderr + result.stdout  # it says which log it read
    assert session.facts["verdict"].sentence in result.stdout


def served_by(session: Session, n: int = 40) -> set[str]:
    """Which arms answer ``n`` predictions through the ingress now."""
    from serving.endpoints import Endpoints

    url = Endpoints.local(session.root / ".stack").predictions_url
    body = {"data": {"ndarray": [[7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]]}}
    return {
        next(iter(requests.post(url, json=body, timeout=10).json()["meta"]["requestPath"])) for _ in range(n)
    }


def check_promote(session: Session, command: str, result) -> None:
    verdict = session.facts["verdict"]
    if not verdict.significant:  # about 2% of replays with these arms: nothing may change
        assert result.returncode == 3, result.stderr
        assert session.working_copy_traffic() == {"model-a": 50, "model-b": 50}
        assert "champion" not in session.aliases()
        return
    ok(result, command)
    loser = ({"model-a", "model-b"} - {verdict.winner}).pop()
    assert session.working_copy_traffic() == {verdict.winner: 100, loser: 0}
    aliases = session.aliases()
    assert aliases["champion"] == aliases[session.alias_served_by(verdict.winner)]
    assert served_by(session) == {verdict.winner}  # applied by the running gateway


def check_rollback(session: Session, command: str, result) -> None:
    if not session.facts["verdict"].significant:
        assert result.returncode == 1 and "nothing to roll back" in result.stderr
        return
    ok(result, command)
    assert session.working_copy_traffic() == {"model-a": 50, "model-b": 50}
    assert "champion" not in session.aliases()  # there was none before the promotion
    assert served_by(session) == {"model-a", "model-b"}


def check_down(session: Session, command: str, result) -> None:
    from serving.local import stack_pids

    ok(result, command)
    assert not session.stack().running()
    assert stack_pids(session.root / ".stack") == []


CHECKS = [
    (re.compile(r"^mlflow run training "), check_mlflow_run),
    (re.compile(r"^mlflow ui "), None),  # runs until stopped: check_mlflow_ui
    (re.compile(r"^python -m serving\.local up "), check_up),
    (re.compile(r"^python -m serving\.local status"), check_status),
    (re.compile(r"^curl .*/predictions$"), check_curl),
    (re.compile(r"^python feedback\.py"), check_feedback),
    (re.compile(r"^python -m experiment report"), check_report),
    (re.compile(r"^python -m experiment promote"), check_promote),
    (re.compile(r"^python -m experiment rollback"), check_rollback),
    (re.compile(r"^python -m serving\.local down"), check_down),
]


def without_comment(command: str) -> str:
    return re.sub(r"\s+#\s.*$", "", command)


@pytest.mark.stack
@pytest.mark.slow
def test_by_hand_section_runs_as_written_and_edits_no_committed_file(tmp_path):
    root = copy_of_repository(tmp_path / "repo")
    session = Session(root, environment())
    ran = []
    try:
        for command in commands(by_hand_block()):
            if ASSIGNMENT.match(command):  # `export X=...`, `PORT=...`: every later command sees it
                session.assignments.append(command)
                continue
            bare = without_comment(command)
            matched = [check for pattern, check in CHECKS if pattern.search(bare)]
            assert len(matched) == 1, f"tests/test_readme.py has no check for the README's `{command}`"
            start = time.perf_counter()
            if matched[0] is None:
                check_mlflow_ui(session, command)
            else:
                matched[0](session, command, session.run(command))
            print(f"{time.perf_counter() - start:6.1f} s  {bare[:90]}")  # shown with pytest -s
            ran.append(bare)
    finally:
        session.stack().down()  # whatever a failed command left running
    assert len(ran) >= 10
    changed = subprocess.run(
        ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert changed == "", f"the by-hand section changed files of the repository:\n{changed}"
