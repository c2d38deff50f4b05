"""Serve a SeldonDeployment on this machine, the way a cluster would, on 127.0.0.1 only.

    python -m serving.local up serving/model-a-b.yaml     # check, start, wait until ready
    python -m serving.local status
    python -m serving.local reload                        # apply an edited traffic split now
    python -m serving.local down                          # stop exactly what `up` started

``up`` checks the manifest first (the CRD schema when available, then traffic, names,
implementation and that every ``modelUri`` resolves) and starts nothing if it fails. It then
starts a supervisor in the background, which runs, per predictor, the real seldon-core
microservice serving ``serving.mlflow_server.MLFlowServer``; the gateway (Istio + executor);
and Prometheus. The supervisor restarts a process that dies or fails its liveness probe, as
Kubernetes restarts a pod, and on ``down`` stops every process group it started.

From Python (the notebook does this)::

    stack = LocalStack.up("serving/model-a-b.yaml")
    stack.ingress_url, stack.predictor_urls, stack.prometheus_url
    stack.down()
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from serving import deployment as sdep
from serving import prometheus
from serving.gateway import GatewayConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STATE_DIR = REPO / ".stack"
DEFAULT_PORT = 8003  # the ingress port of the original example's curl command
HOST = "127.0.0.1"
MODEL_CLASS = "serving.mlflow_server.MLFlowServer"
# what PREDICTIVE_UNIT_IMAGE reports in meta.requestPath and in the metrics' model_image label
MODEL_IMAGE = "mlflow-seldon/mlflowserver:local"
MARKER = "MLFLOW_SELDON_STACK"  # set in every process the stack starts, to find them on `down`


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says why and what to do."""


# --------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Everything the supervisor needs: written by `up`, read by the supervisor."""

    manifest: str
    ingress_port: int
    predictor_ports: dict[str, int]
    model_ports: dict[str, dict[str, int]]  # predictor -> {"http": port, "metrics": port}
    prometheus_port: int
    tracking_uri: str
    host: str = HOST
    model_image: str = MODEL_IMAGE
    gateway_seed: int | None = None


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = HOST) -> list[int]:
    """``n`` distinct ports the OS calls free (all held open together, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def make_plan(
    deployment: sdep.Deployment, port: int, tracking_uri: str, gateway_seed: int | None = None
) -> Plan:
    if port and port_in_use(port):
        raise StackError(
            f"port {port} on {HOST} is in use: another stack? (`python -m serving.local down`) "
            "or choose another port (`up --port N`, or 0 for any free port)"
        )
    names = [p.name for p in deployment.predictors]
    ports = iter(free_ports(3 * len(names) + 2))
    return Plan(
        manifest=str(Path(deployment.source).resolve()),
        ingress_port=port or next(ports),
        predictor_ports={n: next(ports) for n in names},
        model_ports={n: {"http": next(ports), "metrics": next(ports)} for n in names},
        prometheus_port=next(ports),
        tracking_uri=tracking_uri,
        gateway_seed=gateway_seed,
    )


# --------------------------------------------------------------------------------------- supervisor
@dataclass
class Child:
    """One supervised process group: a model server, the gateway or Prometheus."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready_url: str
    readiness: sdep.Probe
    liveness: sdep.Probe | None = None
    popen: subprocess.Popen | None = None
    restarts: int = 0
    ready: bool = False
    started: float = 0.0
    restart_at: float | None = None
    backoff: float = 0.5
    failures: int = 0
    next_probe: float = 0.0
    last_exit: int | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # a process group of its own, like a container: killing it kills every process inside
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
                cwd=REPO,
            )
        self.started = time.monotonic()
        self.ready, self.failures, self.restart_at = False, 0, None
        self.next_probe = self.started + self.readiness.initial_delay

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None:
            try:
                os.killpg(self.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def probe(self, probe: sdep.Probe) -> bool:
        try:
            return requests.get(self.ready_url, timeout=probe.timeout).status_code == 200
        except requests.RequestException:
            return False

    def summary(self) -> dict:
        return {
            "pid": self.popen.pid if self.popen else None,
            "ready": self.ready,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "log": str(self.log),
        }


class Supervisor:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.plan = Plan(**json.loads((state_dir / "plan.json").read_text()))
        self.deployment = sdep.load(self.plan.manifest)
        self.stopping = False
        self.children = self._children()
        self.was_ready = False

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                MARKER: str(self.state_dir),
                "MLFLOW_TRACKING_URI": self.plan.tracking_uri,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def _children(self) -> list[Child]:
        plan, logs = self.plan, self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        children = []
        for p in self.deployment.predictors:
            ports = plan.model_ports[p.name]
            # the environment the Seldon operator gives a model container
            env = self._env(
                PREDICTIVE_UNIT_ID=p.node,
                PREDICTOR_ID=p.name,
                SELDON_DEPLOYMENT_ID=self.deployment.name,
                PREDICTIVE_UNIT_IMAGE=plan.model_image,
                PREDICTOR_LABELS=p.labels_json,
                PREDICTIVE_UNIT_PARAMETERS=json.dumps(
                    [{"name": "model_uri", "value": p.model_uri, "type": "STRING"}]
                ),
                PREDICTIVE_UNIT_HTTP_SERVICE_PORT=str(ports["http"]),
                PREDICTIVE_UNIT_METRICS_SERVICE_PORT=str(ports["metrics"]),
                SELDON_LOG_LEVEL="WARNING",
            )
            env.update(p.env)  # componentSpecs env, e.g. GUNICORN_WORKERS / GUNICORN_THREADS
            children.append(
                Child(
                    name=p.name,
                    argv=[sys.executable, "-m", "serving.microservice", MODEL_CLASS],
                    env=env,
                    log=logs / f"{p.name}.log",
                    ready_url=f"http://{plan.host}:{ports['http']}{p.readiness.path}",
                    readiness=p.readiness,
                    liveness=p.liveness,
                )
            )
        gateway_config = self.state_dir / "gateway.json"
        GatewayConfig(
            manifest=plan.manifest,
            upstreams={n: f"http://{plan.host}:{ports['http']}" for n, ports in plan.model_ports.items()},
            predictor_ports=plan.predictor_ports,
            ingress_port=plan.ingress_port,
            host=plan.host,
            model_image=plan.model_image,
            seed=plan.gateway_seed,
        ).write(gateway_config)
        fast = sdep.Probe(period=0.2, failure_threshold=300, timeout=1.0)
        children.append(
            Child(
                name="gateway",
                argv=[sys.executable, "-m", "serving.gateway", "--config", str(gateway_config)],
                env=self._env(),
                log=logs / "gateway.log",
                ready_url=f"http://{plan.host}:{plan.ingress_port}/ready",
                readiness=fast,
                liveness=sdep.Probe(initial_delay=2, period=2, failure_threshold=3, timeout=2),
            )
        )
        prometheus_dir = self.state_dir / "prometheus"
        prometheus_dir.mkdir(exist_ok=True)
        config = prometheus.write_config(
            self.state_dir / "prometheus.yml",
            gateway=f"{plan.host}:{plan.ingress_port}",
            model_metrics={n: f"{plan.host}:{ports['metrics']}" for n, ports in plan.model_ports.items()},
        )
        children.append(
            Child(
                name="prometheus",
                argv=prometheus.command(config, prometheus_dir / "data", plan.host, plan.prometheus_port),
                env=self._env(),
                log=logs / "prometheus.log",
                ready_url=f"http://{plan.host}:{plan.prometheus_port}/-/ready",
                readiness=fast,
                liveness=sdep.Probe(initial_delay=5, period=5, failure_threshold=3, timeout=2),
            )
        )
        return children

    def write_state(self) -> None:
        plan = self.plan
        state = {
            "supervisor": os.getpid(),
            "manifest": plan.manifest,
            "deployment": self.deployment.name,
            "namespace": self.deployment.namespace,
            "ready": all(c.ready for c in self.children),
            "stopping": self.stopping,
            "urls": {
                "ingress": f"http://{plan.host}:{plan.ingress_port}{self.deployment.ingress_prefix}/api/v1.0",
                "gateway": f"{plan.host}:{plan.ingress_port}",
                "predictors": {n: f"http://{plan.host}:{port}" for n, port in plan.predictor_ports.items()},
                "models": {n: f"http://{plan.host}:{ports['http']}" for n, ports in plan.model_ports.items()},
                "model_metrics": {
                    n: f"http://{plan.host}:{ports['metrics']}/metrics"
                    for n, ports in plan.model_ports.items()
                },
                "prometheus": f"http://{plan.host}:{plan.prometheus_port}",
            },
            "processes": {c.name: c.summary() for c in self.children},
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_dir / "state.json")

    def log(self, message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    def step(self, child: Child, now: float) -> bool:
        """Advance one child; return True when its visible state changed."""
        if child.restart_at is not None:
            if now < child.restart_at:
                return False
            child.restarts += 1
            self.log(f"restarting {child.name} (restart {child.restarts})")
            child.start()
            return True
        code = child.popen.poll()
        if code is not None:
            child.kill()  # anything left of the group (gunicorn workers keep the port otherwise)
            child.last_exit, child.ready = code, False
            child.restart_at = now + child.backoff
            self.log(f"{child.name} exited with {code}; restarting in {child.backoff:g} s")
            child.backoff = min(child.backoff * 2, 10.0)  # like Kubernetes' CrashLoopBackOff
            return True
        if now < child.next_probe:
            return False
        if not child.ready:
            child.next_probe = now + child.readiness.period
            if child.probe(child.readiness):
                child.ready, child.backoff = True, 0.5
                child.next_probe = now + (child.liveness.period if child.liveness else 1e9)
                self.log(f"{child.name} ready after {now - child.started:.1f} s")
                return True
            return False
        if child.liveness is None:
            return False
        child.next_probe = now + child.liveness.period
        if child.probe(child.liveness):
            child.failures = 0
            return False
        child.failures += 1
        if child.failures >= child.liveness.failure_threshold:
            self.log(f"{child.name} failed {child.failures} liveness probes; killing it")
            child.kill()
            child.popen.wait()
            child.last_exit, child.ready = -9, False
            child.restart_at = now
            return True
        return False

    def run(self) -> None:
        def stop(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for child in self.children:
            child.start()
        self.log(f"started {', '.join(c.name for c in self.children)} for {self.plan.manifest}")
        self.write_state()
        while not self.stopping:
            now = time.monotonic()
            changed = False
            for child in self.children:
                changed |= self.step(child, now)
            if changed:
                self.write_state()
                if not self.was_ready and all(c.ready for c in self.children):
                    self.was_ready = True
                    self.log("all processes ready")
            time.sleep(0.1)
        self.shutdown()

    def shutdown(self) -> None:
        self.write_state()
        for child in self.children:
            child.kill(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for child in self.children:
            if child.popen is None:
                continue
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            child.kill(signal.SIGKILL)  # the rest of the group, or a process that ignored SIGTERM
        self.log("stopped")


# --------------------------------------------------------------------------------------- client side
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def stack_pids(state_dir: Path) -> list[int]:
    """Every live process that carries this stack's marker (Linux /proc), orphans included."""
    needle = f"{MARKER}={state_dir}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in pids if pid != os.getpid() and _alive(pid)]


class LocalStack:
    """A handle on a running local stack (its state lives in ``state_dir``)."""

    def __init__(self, state_dir: str | os.PathLike = DEFAULT_STATE_DIR):
        self.state_dir = Path(state_dir).resolve()

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> dict:
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def running(self) -> bool:
        pid = self.state.get("supervisor")
        return bool(pid) and _alive(pid)

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
    def deployment(self) -> str:
        return self.state.get("deployment", "")

    @property
    def namespace(self) -> str:
        return self.state.get("namespace", "")

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def up(
        cls,
        manifest: str | os.PathLike,
        port: int = DEFAULT_PORT,
        state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
        timeout: float = 300,
        gateway_seed: int | None = None,
    ) -> LocalStack:
        """Check the manifest, start everything, wait until every process is ready."""
        from training.tracking import use_local_store

        stack = cls(state_dir)
        deployment = sdep.load(manifest)  # raises DeploymentError before anything starts
        if stack.running():
            if stack.state.get("manifest") == str(Path(manifest).resolve()):
                stack.reload()
                return stack.wait_ready(timeout)
            raise StackError(
                f"a stack is already running from {stack.state.get('manifest')} "
                f"(supervisor pid {stack.state.get('supervisor')}); run `python -m serving.local down` first"
            )
        leftovers = stack_pids(stack.state_dir) if Path("/proc").is_dir() else []
        if leftovers:
            raise StackError(
                f"processes of an earlier stack are still running {leftovers}; run `python -m serving.local down`"
            )
        tracking_uri = use_local_store()
        for p in deployment.predictors:
            sdep.resolve_model_uri(p.model_uri)
        prometheus.binary()  # a clear error now rather than a crash loop later

        stack.state_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 4):
            stack._start(make_plan(deployment, port, tracking_uri, gateway_seed))
            try:
                return stack.wait_ready(timeout)
            except StackError as e:
                stack.down()
                # a free port can be taken by another program between choosing and binding it:
                # choose again (a port given by the caller is checked up front instead)
                taken = ("address already in use", "connection in use")  # asyncio/Prometheus, gunicorn
                if not any(t in str(e).lower() for t in taken) or attempt == 3:
                    raise

    def _start(self, plan: Plan) -> None:
        """Write the plan and start the supervisor in a session of its own."""
        for stale in ("state.json", "plan.json"):
            (self.state_dir / stale).unlink(missing_ok=True)
        # a fresh TSDB per run: the run's queries see this run's series only
        shutil.rmtree(self.state_dir / "prometheus", ignore_errors=True)
        (self.state_dir / "plan.json").write_text(json.dumps(asdict(plan), indent=2))
        with open(self.state_dir / "supervisor.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "serving.local", "--state-dir", str(self.state_dir), "_supervise"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
                env={**os.environ, MARKER: str(self.state_dir)},
            )

    def wait_ready(self, timeout: float = 300) -> LocalStack:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state
            if state.get("ready"):
                return self
            pid = state.get("supervisor")
            if (pid and not _alive(pid)) or (not pid and time.monotonic() > deadline - timeout + 30):
                raise StackError(
                    f"the stack's supervisor stopped:\n{self._tail(self.state_dir / 'supervisor.log')}"
                )
            for name, proc in state.get("processes", {}).items():
                if proc["restarts"] >= 3 and not proc["ready"]:
                    raise StackError(
                        f"{name} keeps failing to start (exit {proc['last_exit']}):\n{self._tail(Path(proc['log']))}"
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
        """Ask the gateway to re-read the manifest now (it also notices edits by itself)."""
        response = requests.post(f"http://{self.gateway_endpoint}/admin/reload", timeout=10)
        result = response.json()
        if not result.get("applied"):
            raise sdep.DeploymentError(result.get("error", "manifest not applied"))
        return result

    def status(self) -> dict:
        state = self.state
        if not state:
            return {"running": False}
        state["running"] = self.running()
        return state

    def down(self, timeout: float = 15) -> list[int]:
        """Stop the supervisor and every process it started; return the pids that were stopped."""
        state = self.state
        pid = state.get("supervisor")
        targets = set(stack_pids(self.state_dir)) if Path("/proc").is_dir() else set()
        if pid:
            targets.add(pid)
        for proc in state.get("processes", {}).values():
            if proc.get("pid"):
                targets.add(proc["pid"])
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        # whatever is left (a supervisor killed -9, orphans): kill by group, then by pid
        for proc in state.get("processes", {}).values():
            if proc.get("pid"):
                try:
                    os.killpg(proc["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        leftovers = set(stack_pids(self.state_dir)) if Path("/proc").is_dir() else set()
        for p in leftovers | ({pid} if pid and _alive(pid) else set()):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in targets | leftovers):
            time.sleep(0.05)
        (self.state_dir / "state.json").unlink(missing_ok=True)
        return sorted(targets | leftovers)


# --------------------------------------------------------------------------------------- CLI
def _print_status(state: dict) -> None:
    if not state.get("running"):
        print("no local stack is running")
        return
    urls = state["urls"]
    print(f"{state['deployment']} from {state['manifest']}  ({'ready' if state['ready'] else 'starting'})")
    print(f"  ingress     {urls['ingress']}/predictions")
    for name, url in urls["predictors"].items():
        print(f"  {name:<11} {url}/api/v1.0/predictions   (the {state['deployment']}-{name} Service)")
    print(f"  prometheus  {urls['prometheus']}")
    for name, proc in state["processes"].items():
        flag = "ready" if proc["ready"] else "not ready"
        print(f"  process {name:<11} pid {proc['pid']:<8} {flag:<9} restarts {proc['restarts']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.local", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--state-dir", default=str(DEFAULT_STATE_DIR), help="where pids, logs and Prometheus data live"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="check the manifest, start the stack, wait until ready")
    up.add_argument("manifest", help="a SeldonDeployment YAML, e.g. serving/model-a-b.yaml")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="ingress port (0: any free port)")
    up.add_argument("--timeout", type=float, default=300)
    sub.add_parser("status", help="what is running, where")
    sub.add_parser("reload", help="apply the manifest's current traffic split now")
    sub.add_parser("down", help="stop everything the stack started")
    sub.add_parser("_supervise", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.command == "_supervise":
        Supervisor(Path(args.state_dir)).run()
        return 0
    stack = LocalStack(args.state_dir)
    try:
        if args.command == "up":
            stack = LocalStack.up(
                args.manifest, port=args.port, state_dir=args.state_dir, timeout=args.timeout
            )
            _print_status(stack.status())
        elif args.command == "status":
            _print_status(stack.status())
        elif args.command == "reload":
            if not stack.running():
                raise StackError(
                    "no local stack is running; start one with `python -m serving.local up <manifest>`"
                )
            print(json.dumps(stack.reload()))
        elif args.command == "down":
            stopped = stack.down()
            print(f"stopped {len(stopped)} processes" if stopped else "no local stack was running")
    except (StackError, sdep.DeploymentError, prometheus.PrometheusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
