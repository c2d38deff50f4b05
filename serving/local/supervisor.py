"""The supervisor: starts the stack's processes and keeps them running, as Kubernetes would.

Per predictor, the real seldon-core microservice serving ``serving.mlflow_server.MLFlowServer``;
the gateway (Istio + executor); and Prometheus. A process that dies or fails its liveness probe
is restarted with a growing back-off (CrashLoopBackOff). On SIGTERM every process group is
stopped: SIGTERM to its leader, a grace period, then SIGKILL (``processes.stop_groups``).

It runs in a session of its own (``python -m serving.local _supervise``), started by
``LocalStack.up``, which writes ``plan.json`` first; it writes ``state.json`` for clients.
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

import requests

from serving import deployment as sdep
from serving import prometheus
from serving.gateway import GatewayConfig
from serving.local.processes import HOST, MARKER, ROLE, free_ports, signal_group, stop_groups
from serving.request_logger import local_sink_ports
from serving.request_logger.offload import NICENESS, yield_cpu

REPO = Path(__file__).resolve().parents[2]
MODEL_CLASS = "serving.mlflow_server.MLFlowServer"
# what PREDICTIVE_UNIT_IMAGE reports in meta.requestPath and in the metrics' model_image label
MODEL_IMAGE = "mlflow-seldon/mlflowserver:local"
SHADOW_NICENESS = NICENESS  # a shadow's model server and the sink, as the gateway's logger process
GRACE_SECONDS = 10.0  # a short terminationGracePeriodSeconds: gunicorn's workers exit in ~1-3 s


@dataclass
class Plan:
    """Everything the supervisor needs, and what `up` compares a running stack against."""

    manifest: str  # the working copy the stack serves (<state dir>/manifest.yaml)
    source: str  # the manifest `up` was given, copied to ``manifest``
    manifest_sha256: str  # of the given manifest's content when it was copied
    ingress_port: int
    requested_port: int  # what `up` was asked for (0: any free port)
    predictor_ports: dict[str, int]
    model_ports: dict[str, dict[str, int]]  # predictor -> {"http": port, "metrics": port}
    prometheus_port: int
    tracking_uri: str
    # predictor -> {"uri": modelUri, "served": what its model server loads, "version": description}
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    host: str = HOST
    model_image: str = MODEL_IMAGE
    gateway_seed: int | None = None
    # sha256 of the working copy as `up` wrote it, when it differs from the given manifest (the
    # request-logger URLs moved to a free port): what "not edited since `up`" is checked against
    served_sha256: str | None = None
    scrape_interval: float = prometheus.SCRAPE_INTERVAL_SECONDS  # Prometheus's, in seconds

    def write(self, path: Path) -> None:
        from dataclasses import asdict

        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))


def choose_ports(names: list[str], port: int, servers: list[str] | None = None) -> dict:
    """Free loopback ports for everything; ``port`` for the ingress unless it is 0.

    ``names``: the predictors (one "Service" port each); ``servers``: every node that runs a
    server (``Deployment.servers``: the predictors, and a router's children), default ``names``.
    """
    servers = names if servers is None else servers
    ports = iter(free_ports(len(names) + 2 * len(servers) + 2))
    return {
        "ingress_port": port or next(ports),
        "predictor_ports": {n: next(ports) for n in names},
        "model_ports": {n: {"http": next(ports), "metrics": next(ports)} for n in servers},
        "prometheus_port": next(ports),
    }


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
    niceness: int = 0  # > 0: it yields the CPU to the callers' path (a session of its own, niced)

    def start(self) -> None:
        argv = ["nice", "-n", str(self.niceness), *self.argv] if self.niceness else self.argv
        with open(self.log, "ab") as log:
            # a process group of its own, like a container: killing it kills every process inside
            # (a new session is a new group too: the unit of the CPU scheduler's autogroups)
            self.popen = subprocess.Popen(
                argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=None if self.niceness else 0,
                start_new_session=bool(self.niceness),
                cwd=REPO,
            )
        if self.niceness:
            yield_cpu(self.popen.pid)
        self.started = time.monotonic()
        self.ready, self.failures, self.restart_at = False, 0, None
        self.next_probe = self.started + self.readiness.initial_delay

    def kill(self) -> None:
        if self.popen is not None:
            signal_group(self.popen.pid, signal.SIGKILL)

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
        self.plan = Plan.read(state_dir / "plan.json")
        self.deployment = sdep.load(self.plan.manifest)
        self.stopping = False
        self.children = self._children()
        self.was_ready = False

    def _env(self, role: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                MARKER: str(self.state_dir),
                ROLE: role,
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
        for p in self.deployment.servers:
            ports = plan.model_ports[p.name]
            # the version `up` resolved and recorded: a restarted server loads the same model even
            # if the alias has moved since (`up` then refuses to reuse the stack)
            model_uri = plan.models.get(p.name, {}).get("served", p.model_uri)
            # the environment the Seldon operator gives a model container
            env = self._env(
                p.name,
                PREDICTIVE_UNIT_ID=p.node,
                PREDICTOR_ID=p.name,
                SELDON_DEPLOYMENT_ID=self.deployment.name,
                PREDICTIVE_UNIT_IMAGE=plan.model_image,
                PREDICTOR_LABELS=p.labels_json,
                PREDICTIVE_UNIT_PARAMETERS=json.dumps(
                    [{"name": "model_uri", "value": model_uri, "type": "STRING"}]
                ),
                PREDICTIVE_UNIT_HTTP_SERVICE_PORT=str(ports["http"]),
                PREDICTIVE_UNIT_METRICS_SERVICE_PORT=str(ports["metrics"]),
                SELDON_LOG_LEVEL="WARNING",
            )
            env.update(p.env)  # componentSpecs env, e.g. GUNICORN_WORKERS / GUNICORN_THREADS
            argv = [sys.executable, "-m", "serving.microservice", MODEL_CLASS]
            if p.children:  # a ROUTER: its container's command (serving.routers), its graph parameters
                argv = [sys.executable, *p.command[1:]]
                env["PREDICTIVE_UNIT_PARAMETERS"] = json.dumps(list(p.parameters))
                env["ROUTER_STATE_DIR"] = str(self.state_dir / "routers")  # the pod's volume, here
            children.append(
                Child(
                    name=p.name,
                    argv=argv,
                    env=env,
                    log=logs / f"{p.name}.log",
                    ready_url=f"http://{plan.host}:{ports['http']}{p.readiness.path}",
                    readiness=p.readiness,
                    liveness=p.liveness,
                    # on a cluster the shadow has CPU of its own; here it shares the callers' cores, so
                    # it yields them (it answers every mirror, and its restart loads a model)
                    niceness=SHADOW_NICENESS if p.shadow else 0,
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
        # a request-logger sink for each loopback port the manifest's logger URLs name (started
        # before the gateway: its loggers send from the first request on)
        sink_ports = sorted(local_sink_ports(self.deployment.manifest))
        for port in sink_ports:
            children.append(
                Child(
                    name="request-logger" if len(sink_ports) == 1 else f"request-logger-{port}",
                    argv=[
                        sys.executable,
                        "-m",
                        "serving.request_logger",
                        "--port",
                        str(port),
                        "--out",
                        str(self.state_dir / "request-logs"),
                    ],
                    env=self._env("request-logger"),
                    log=logs
                    / ("request-logger.log" if len(sink_ports) == 1 else f"request-logger-{port}.log"),
                    ready_url=f"http://{plan.host}:{port}/health",
                    readiness=fast,
                    liveness=sdep.Probe(initial_delay=2, period=2, failure_threshold=3, timeout=2),
                    niceness=SHADOW_NICENESS,  # as the shadow: the callers' requests come first
                )
            )
        children.append(
            Child(
                name="gateway",
                argv=[sys.executable, "-m", "serving.gateway", "--config", str(gateway_config)],
                env=self._env("gateway"),
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
            interval=plan.scrape_interval,
        )
        children.append(
            Child(
                name="prometheus",
                argv=prometheus.command(config, prometheus_dir / "data", plan.host, plan.prometheus_port),
                env=self._env("prometheus"),
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
            "source": plan.source,
            "tracking_uri": plan.tracking_uri,
            "models": {name: model["version"] for name, model in plan.models.items()},
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
        running = [c for c in self.children if c.popen is not None and c.popen.poll() is None]
        stop_groups([c.popen.pid for c in running], grace=GRACE_SECONDS)
        for child in self.children:
            if child.popen is not None:
                child.kill()  # a group whose leader had already exited (a restart pending)
                child.popen.poll()
        self.log("stopped")
