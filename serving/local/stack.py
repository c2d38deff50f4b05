"""``LocalStack``: start, find, check and stop the local stack (the client side of the supervisor).

The stack serves a working copy of the manifest it was given, ``<state dir>/manifest.yaml``
(``LocalStack.manifest_path``): promotion and traffic edits change that copy, never the file a
reader checked out. ``up`` records what it loaded (the model version each registry alias named,
the tracking store, the manifest, the ports) and reuses a running stack only when all of these
still match; otherwise it refuses and names the command to run, or, with ``replace=True``, stops
the old stack and starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from serving import deployment as sdep
from serving import prometheus
from serving.local import processes, reuse
from serving.local.supervisor import REPO, Plan, choose_ports
from serving.request_logger import local_sink_ports
from serving.request_logger.sink import LOCAL_HOSTS

DEFAULT_STATE_DIR = REPO / ".stack"
DEFAULT_PORT = 8003  # the ingress port of the original example's curl command
DOWN = "python -m serving.local down"


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says why and what to do."""


class StackNotRunning(StackError):
    """No local stack is running (in this state folder)."""


class LocalStack:
    """A handle on the local stack whose state lives in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike = DEFAULT_STATE_DIR):
        self.state_dir = Path(state_dir).resolve()
        self.reused = False  # set by `up` when it found the same stack running

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> dict:
        """What the supervisor last wrote (urls, processes, readiness); {} when there is none."""
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def plan(self) -> Plan | None:
        try:
            return Plan.read(self.state_dir / "plan.json")
        except (OSError, ValueError, TypeError):
            return None

    @property
    def manifest_path(self) -> Path:
        """The working copy of the manifest this stack serves: edit it, then ``reload()``."""
        return self.state_dir / "manifest.yaml"

    def running(self) -> bool:
        return processes.ours(self.state.get("supervisor"), self.state_dir)

    def require_running(self) -> None:
        if not self.running():
            raise StackNotRunning(
                f"no local stack is running (state in {self.state_dir}); start one with "
                "`python -m serving.local up serving/model-a-b.yaml`"
            )

    @property
    def urls(self) -> dict:
        return self.state.get("urls", {})

    @property
    def gateway_endpoint(self) -> str:
        """``host:port`` of the ingress, for ``SeldonClient(gateway="istio", gateway_endpoint=...)``."""
        return self.urls["gateway"]

    @property
    def ingress_url(self) -> str:
        return self.urls["ingress"]

    @property
    def predictor_urls(self) -> dict[str, str]:
        return self.urls["predictors"]

    @property
    def prometheus_url(self) -> str:
        return self.urls["prometheus"]

    @property
    def scrape_interval(self) -> float:
        """Seconds between Prometheus's scrapes of this stack."""
        plan = self.plan
        return plan.scrape_interval if plan else prometheus.SCRAPE_INTERVAL_SECONDS

    @property
    def deployment(self) -> str:
        return self.state.get("deployment", "")

    @property
    def namespace(self) -> str:
        return self.state.get("namespace", "")

    def orphans(self) -> list[dict]:
        """Processes of this stack that still run although its supervisor is gone."""
        if self.running():
            return []
        return processes.describe(processes.marked(self.state_dir))

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def up(
        cls,
        manifest: str | os.PathLike,
        port: int | None = None,
        state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
        timeout: float = 300,
        gateway_seed: int | None = None,
        replace: bool = False,
        scrape_interval: float | None = None,
    ) -> LocalStack:
        """Check the manifest, copy it to ``manifest_path``, start everything, wait until ready.

        ``port``: the ingress port; None means 8003 for a new stack and any port for a running
        one; 0 means any free port. A running stack that serves the same manifest, tracking store
        and model versions (and the port asked for) is returned as it is (``reused`` is True).
        Any other running stack is refused with a ``StackError``, or stopped first when
        ``replace`` is True. ``scrape_interval``: Prometheus's, in seconds (None: 2).
        """
        from training.tracking import use_local_store

        stack = cls(state_dir)
        manifest = Path(manifest)
        deployment = sdep.load(manifest)  # raises DeploymentError before anything starts
        tracking_uri = use_local_store()
        models = reuse.loaded_models(deployment)
        prometheus.binary()  # a clear error now rather than a crash loop later

        if stack.running():
            differences = reuse.differences(
                stack.plan, stack.manifest_path, manifest, tracking_uri, models, port, scrape_interval
            )
            if not differences:
                stack.reused = True
                print(
                    f"a local stack is already running (supervisor pid {stack.state['supervisor']}) "
                    "with this manifest, tracking store and model versions: reusing it. "
                    f"To start afresh: `{DOWN}`, then `up` again."
                )
                return stack.wait_ready(timeout)
            if not replace:
                raise StackError(
                    f"a local stack is already running (supervisor pid {stack.state['supervisor']}) "
                    "that differs from what was asked:\n  - "
                    + "\n  - ".join(differences)
                    + f"\nstop it with `{DOWN}` (or `make down`), or replace it: "
                    "`python -m serving.local up --replace ...` / `LocalStack.up(..., replace=True)`"
                )
            stack.down()
        elif orphans := stack.orphans():
            if not replace:
                raise StackError(
                    f"processes of an earlier stack are still running (pids {[o['pid'] for o in orphans]}, "
                    f"its supervisor is gone); stop them with `{DOWN}` (or `make down`), or use `--replace`"
                )
            stack.down()

        port = DEFAULT_PORT if port is None else port
        if port and processes.port_in_use(port):
            raise StackError(
                f"port {port} on {processes.HOST} is in use: another stack? (`{DOWN}`) "
                "or choose another port (`up --port N`, or 0 for any free port)"
            )
        sinks = local_sink_ports(deployment.manifest)
        for taken in sorted(p for p in sinks if port and processes.port_in_use(p)):
            raise StackError(
                f"port {taken} on {processes.HOST}, where the manifest's request logger sends, is in use: "
                f"another stack? (`{DOWN}`) or use any free ports (`up --port 0`)"
            )
        stack.state_dir.mkdir(parents=True, exist_ok=True)
        digest = stack._copy_manifest(manifest)
        served_sha256 = stack._move_sinks(sinks) if not port and sinks else None
        names = [p.name for p in deployment.predictors]
        servers = [s.name for s in deployment.servers]
        for attempt in range(1, 4):
            plan = Plan(
                manifest=str(stack.manifest_path),
                source=str(manifest.resolve()),
                manifest_sha256=digest,
                requested_port=port,
                tracking_uri=tracking_uri,
                models=models,
                gateway_seed=gateway_seed,
                served_sha256=served_sha256,
                scrape_interval=scrape_interval or prometheus.SCRAPE_INTERVAL_SECONDS,
                **choose_ports(names, port, servers),
            )
            stack._start(plan)
            try:
                return stack.wait_ready(timeout)
            except StackError as e:
                stack.down()
                # a free port can be taken by another program between choosing and binding it:
                # choose again (a port given by the caller is checked up front instead)
                taken = ("address already in use", "connection in use")  # asyncio/Prometheus, gunicorn
                if not any(t in str(e).lower() for t in taken) or attempt == 3:
                    raise

    def _copy_manifest(self, manifest: Path) -> str:
        """Copy the given manifest to the working copy (atomically); return its sha256."""
        content = manifest.read_bytes()
        if manifest.resolve() != self.manifest_path:
            tmp = self.manifest_path.with_name("manifest.yaml.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, self.manifest_path)
        return hashlib.sha256(content).hexdigest()

    def _move_sinks(self, ports: set[int]) -> str:
        """On free ports: the working copy's loopback logger URLs get free ports too (the declared
        one may be another stack's sink); returns the working copy's new sha256."""
        from urllib.parse import urlsplit

        from serving import manifest as yaml_manifest

        moved = dict(zip(sorted(ports), processes.free_ports(len(ports)), strict=True))
        document = yaml_manifest.load(self.manifest_path)

        def walk(node) -> None:
            logger = node.get("logger")
            url = logger.get("url") if logger else None
            if url and urlsplit(url).hostname in LOCAL_HOSTS and (urlsplit(url).port or 80) in moved:
                parts = urlsplit(url)
                logger["url"] = parts._replace(netloc=f"{parts.hostname}:{moved[parts.port or 80]}").geturl()
            for child in node.get("children") or []:
                walk(child)

        for predictor in document["spec"]["predictors"]:
            walk(predictor["graph"])
        yaml_manifest.write(document, self.manifest_path)
        return reuse.sha256(self.manifest_path)

    def _start(self, plan: Plan) -> None:
        """Write the plan and start the supervisor in a session of its own."""
        for stale in ("state.json", "plan.json"):
            (self.state_dir / stale).unlink(missing_ok=True)
        # a fresh TSDB per run: the run's queries see this run's series only
        shutil.rmtree(self.state_dir / "prometheus", ignore_errors=True)
        plan.write(self.state_dir / "plan.json")
        with open(self.state_dir / "supervisor.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "serving.local", "--state-dir", str(self.state_dir), "_supervise"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
                env={**os.environ, processes.MARKER: str(self.state_dir), processes.ROLE: "supervisor"},
            )

    def wait_ready(self, timeout: float = 300) -> LocalStack:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            state = self.state
            if state.get("ready"):
                return self
            pid = state.get("supervisor")
            if (pid and not processes.alive(pid)) or (not pid and time.monotonic() > started + 30):
                raise StackError(
                    f"the stack's supervisor stopped:\n{self._tail(self.state_dir / 'supervisor.log')}"
                )
            for name, proc in state.get("processes", {}).items():
                if proc["restarts"] >= 3 and not proc["ready"]:
                    raise StackError(
                        f"{name} keeps failing to start (exit {proc['last_exit']}):\n"
                        + self._tail(Path(proc["log"]))
                    )
            time.sleep(0.2)
        waiting = [n for n, p in self.state.get("processes", {}).items() if not p["ready"]]
        raise StackError(
            f"not ready after {timeout:g} s, waiting for {waiting}; logs in {self.state_dir / 'logs'}"
        )

    @staticmethod
    def _tail(path: Path, lines: int = 25) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {path})"

    def reload(self) -> dict:
        """Have the gateway re-read the working copy now (it also notices edits by itself)."""
        self.require_running()
        response = requests.post(f"http://{self.gateway_endpoint}/admin/reload", timeout=10)
        result = response.json()
        if not result.get("applied"):
            raise sdep.DeploymentError(result.get("error", "manifest not applied"))
        return result

    def status(self) -> dict:
        """The supervisor's state with ``running``; when it is gone, ``orphans``: what still runs."""
        state = self.state
        state["running"] = self.running()
        if not state["running"]:
            state["orphans"] = self.orphans()
        return state

    def down(self, timeout: float = 30) -> list[int]:
        """Stop the supervisor and every process it started; return the pids that were stopped.

        Also stops what a supervisor killed with SIGKILL left running (found by ``MARKER``).
        """
        supervisor = self.state.get("supervisor")
        # only processes that carry this stack's marker: a pid in a stale state.json may be a stranger's now
        targets = {p.pid for p in processes.marked(self.state_dir)}
        if supervisor in targets:
            # it stops its process groups itself: SIGTERM to each leader, a grace period, SIGKILL
            processes.stop_groups([supervisor], grace=timeout)
        left = processes.marked(self.state_dir)
        if left:  # orphans of a supervisor that was killed: stop them the same way
            leaders = [p.pid for p in left if _leads_group(p.pid)]
            processes.stop_groups(leaders)
            processes.kill(processes.marked(self.state_dir))
        processes.wait_gone(targets)
        (self.state_dir / "state.json").unlink(missing_ok=True)
        return sorted(targets)


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
