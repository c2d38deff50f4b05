"""The servers the benchmark starts besides the local stack, each on 127.0.0.1, each stopped by pid.

- ``mlflow models serve`` from the project's own virtualenv (``--env-manager local``);
- MLServer with its MLflow runtime, from its own virtualenv under ``.envs/mlserver`` (git-ignored):
  MLServer needs protobuf >= 5, seldon-core 1.17 needs protobuf < 4, so they cannot share one.

Every server runs in a process group of its own (like a container); ``Server.stop`` kills the
group, then checks by pid that nothing is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import yaml

from bench import measure
from serving.local import HOST, free_port

REPO = Path(__file__).resolve().parents[1]
MLSERVER_ENV = REPO / ".envs" / "mlserver"


class ServerError(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    argv: list[str]
    ready_url: str
    log: Path
    env: dict = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Server:
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                process_group=0,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            try:
                if requests.get(self.ready_url, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"{self.name} not ready after {timeout:g} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """Every live process of this server's group."""
        if self.popen is None:
            return []
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == self.popen.pid:
                    found.append(proc.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return found

    def listening(self) -> set[str]:
        # note: a gRPC server on an IPv6 socket reports IPv4 loopback as ::ffff:127.0.0.1
        """The IP addresses this server's processes listen on (must be loopback only)."""
        return measure.listening(self.pids())

    def stop(self) -> None:
        if self.popen is None:
            return
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                time.sleep(0.5)  # let the group's other processes finish; SIGKILL whatever is left
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen = None


def mlflow_serve(model_path: str, workdir: Path) -> Server:
    """``mlflow models serve`` of the same model, same venv, one worker, loopback."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    return Server(
        name="mlflow models serve",
        argv=[
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            model_path,
            "--env-manager",
            "local",
            "-h",
            HOST,
            "-p",
            str(port),
        ],
        ready_url=f"http://{HOST}:{port}/ping",
        log=workdir / "mlflow-serve.log",
        # it starts `uvicorn` by name: the venv's
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )


def mlserver_python() -> Path | None:
    python = MLSERVER_ENV / "bin" / "python"
    return python if python.exists() else None


def ensure_mlserver_env(versions: dict[str, str], log: Path) -> tuple[Path | None, str]:
    """Create ``.envs/mlserver`` (once) with MLServer, its MLflow runtime and the model's versions.

    Returns (python, "") or (None, why it cannot be used).
    """
    python = mlserver_python()
    if python is not None:
        check = subprocess.run(
            [str(python), "-c", "import mlserver, mlserver_mlflow"], capture_output=True, text=True
        )
        if check.returncode == 0:
            return python, ""
    pins = [f"{name}=={version}" for name, version in versions.items()]
    # MLServer 1.7's inference-pool workers call asyncio.get_event_loop() outside a running loop,
    # which uvloop 0.22+ no longer allows: the worker dies and the model never loads.
    pins.append("uvloop<0.22")
    steps = [
        [sys.executable, "-m", "venv", str(MLSERVER_ENV)],
        [
            str(MLSERVER_ENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "mlserver",
            "mlserver-mlflow",
            *pins,
        ],
    ]
    with open(log, "ab") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode != 0:
                return None, f"`{' '.join(step[:6])} ...` failed (see {log})"
    return mlserver_python(), ""


def mlserver(python: Path, model_path: str, workdir: Path) -> Server:
    """MLServer (defaults, MLflow runtime) serving the same model on loopback ports."""
    folder = workdir / "mlserver"
    (folder / "wines").mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": HOST,
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
            }
        )
    )
    (folder / "wines" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "wines",
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": model_path},
            }
        )
    )
    return Server(
        name="MLServer",
        argv=[str(python.parent / "mlserver"), "start", str(folder)],
        ready_url=f"http://{HOST}:{http_port}/v2/models/wines/ready",
        log=workdir / "mlserver.log",
        env={"PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        cwd=folder,
    )


def start_gateway(stack, manifest: Path, folder: Path, name: str) -> tuple[subprocess.Popen, str]:
    """A second gateway serving ``manifest`` in front of the stack's model servers."""
    from serving.gateway import GatewayConfig

    names = [p["name"] for p in yaml.safe_load(manifest.read_text())["spec"]["predictors"]]
    config = GatewayConfig(
        manifest=str(manifest),
        upstreams={n: stack.urls["models"][n] for n in names},
        predictor_ports={n: free_port() for n in names},
        ingress_port=free_port(),
        seed=1,
    )
    config.write(folder / f"{name}.json")
    log = open(folder / f"{name}.log", "ab")  # noqa: SIM115 (the process's log: closed at exit)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.gateway", "--config", str(folder / f"{name}.json")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    url = f"http://127.0.0.1:{config.ingress_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, f"{url}/seldon/default/wines-classifier/api/v1.0"
        except requests.RequestException:
            time.sleep(0.2)
    raise TimeoutError(f"gateway {name} did not start; see {folder / f'{name}.log'}")
