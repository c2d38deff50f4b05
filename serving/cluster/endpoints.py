"""Where feedback.py sends requests on a cluster, and the port-forwards that reach it from a laptop.

Predictions go through the ingress, so the traffic split picks the arm: Seldon Core's Istio
VirtualService routes ``/seldon/<namespace>/<sdep>/`` to the predictors' Services with the
weights of ``traffic``. Feedback goes to the arm that answered, through that predictor's own
Service, which the operator creates per predictor as ``<sdep>-<predictor>`` (``seldon.io/svc-name``
annotation overrides it; a name over 63 characters becomes ``seldon-<md5 of it>``), port 8000
(``http``, the executor's REST API: ``/api/v1.0/feedback``). Two ways to reach it:

- from a laptop, ``kubectl port-forward -n <ns> svc/<sdep>-<predictor> <local port>:8000`` per
  arm (``port_forwards``; ``PortForwards`` runs them and waits until each answers), then
  ``127.0.0.1:<local port>``;
- from inside the cluster (a Job), ``<sdep>-<predictor>.<ns>.svc.cluster.local:8000``.

``cluster_endpoints(...)`` returns the project's one ``serving.endpoints.Endpoints``, which
``feedback.py`` takes; ``feedback_args(endpoints)`` is the matching command line.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from serving import deployment as sdep
from serving.cluster import ClusterError
from serving.endpoints import Endpoints

EXECUTOR_PORT = 8000  # the executor's REST port on the predictor Service (Helm value executor.port)
SVC_NAME_ANNOTATION = "seldon.io/svc-name"
ISTIO_INGRESS = ("istio-system", "istio-ingressgateway")  # namespace and Service of Istio's default gateway
VIAS = ("port-forward", "cluster-dns")


def predictor_service(deployment: str, predictor: str, annotations: dict | None = None) -> str:
    """The per-predictor Service the operator creates (Seldon Core v1.17.1 ``GetPredictorKey``)."""
    if annotations and annotations.get(SVC_NAME_ANNOTATION):
        return annotations[SVC_NAME_ANNOTATION]
    name = f"{deployment}-{predictor}"
    return name if len(name) <= 63 else "seldon-" + hashlib.md5(name.encode()).hexdigest()


def _split_address(value: str, what: str) -> tuple[str, str]:
    """``host``, ``host:port`` or ``http(s)://host[:port]`` -> ``(scheme, "host[:port]")``."""
    if not isinstance(value, str) or not value.strip():
        raise ClusterError(f"{what} is empty: give host[:port] or http://host[:port]")
    url = value.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClusterError(f"{what} {value!r} is not an http(s) address")
    if parts.path or parts.query:
        raise ClusterError(f"{what} {value!r} must be a host and port only, without a path")
    try:
        _ = parts.port  # raises on a port that is not a number
    except ValueError as e:
        raise ClusterError(f"{what} {value!r}: {e}") from e
    return parts.scheme, parts.netloc


def _deployment(manifest) -> sdep.Deployment:
    if isinstance(manifest, sdep.Deployment):
        return manifest
    if isinstance(manifest, dict):
        return sdep.parse(manifest, local=False)
    return sdep.load(manifest, local=False)


@dataclass(frozen=True)
class Forward:
    """One ``kubectl port-forward`` of a predictor's Service to a port on 127.0.0.1."""

    namespace: str
    service: str
    local_port: int
    remote_port: int = EXECUTOR_PORT

    def argv(self, kubectl: str = "kubectl") -> list[str]:
        return [
            kubectl,
            "port-forward",
            "-n",
            self.namespace,
            f"svc/{self.service}",
            f"{self.local_port}:{self.remote_port}",
        ]

    @property
    def command(self) -> str:
        return shlex.join(self.argv())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.local_port}"


def port_forwards(
    manifest, local_ports: dict[str, int] | None = None, first_local_port: int = 9001
) -> dict[str, Forward]:
    """Predictor -> the port-forward of its Service.

    Local ports: ``local_ports``, or consecutive from ``first_local_port``.
    """
    deployment = _deployment(manifest)
    names = [p.name for p in deployment.predictors]
    unknown = sorted(set(local_ports or {}) - set(names))
    if unknown:
        raise ClusterError(
            f"local_ports names {unknown}, which are not predictors of {deployment.name} ({names})"
        )
    ports = {name: int((local_ports or {}).get(name, first_local_port + i)) for i, name in enumerate(names)}
    bad = {n: p for n, p in ports.items() if not 1024 <= p <= 65535}
    if bad:
        raise ClusterError(f"local ports must be 1024-65535 (no root needed), got {bad}")
    if len(set(ports.values())) != len(ports):
        raise ClusterError(f"each arm needs its own local port, got {ports}")
    return {
        p.name: Forward(
            deployment.namespace, predictor_service(deployment.name, p.name, p.annotations), ports[p.name]
        )
        for p in deployment.predictors
    }


def cluster_endpoints(
    manifest: str | os.PathLike | dict | sdep.Deployment,
    ingress: str,
    via: str = "port-forward",
    local_ports: dict[str, int] | None = None,
    first_local_port: int = 9001,
) -> Endpoints:
    """Endpoints of a rendered SeldonDeployment on a cluster.

    ``ingress``: the Istio ingress gateway as ``host[:port]`` or a URL - its load balancer address
    (``kubectl get svc -n istio-system istio-ingressgateway``), ``127.0.0.1:8080`` behind
    ``kubectl port-forward -n istio-system svc/istio-ingressgateway 8080:80``, or, from a Job,
    ``istio-ingressgateway.istio-system.svc.cluster.local``.
    ``via``: ``port-forward`` (predictors on 127.0.0.1, ports as ``port_forwards`` picks them) or
    ``cluster-dns`` (the Services' in-cluster names).
    """
    deployment = _deployment(manifest)
    if via not in VIAS:
        raise ClusterError(f"via must be one of {VIAS}, got {via!r}")
    scheme, gateway = _split_address(ingress, "ingress")
    if via == "port-forward":
        addresses = {
            p: f.address for p, f in port_forwards(deployment, local_ports, first_local_port).items()
        }
    else:
        addresses = {
            p.name: f"{predictor_service(deployment.name, p.name, p.annotations)}."
            f"{deployment.namespace}.svc.cluster.local:{EXECUTOR_PORT}"
            for p in deployment.predictors
        }
    # the Services speak plain http (the executor), whatever the ingress speaks
    predictors = {p: a if scheme == "http" else f"http://{a}" for p, a in addresses.items()}
    return Endpoints(
        gateway=gateway,
        namespace=deployment.namespace,
        deployment=deployment.name,
        predictors=predictors,
        nodes={p.node: p.name for p in deployment.predictors},
        scheme=scheme,
    )


def feedback_args(endpoints: Endpoints) -> list[str]:
    """Arguments for ``python feedback.py`` (its cluster mode takes host:port addresses)."""
    args = [
        "--ingress",
        endpoints.gateway,
        "--namespace",
        endpoints.namespace,
        "--deployment",
        endpoints.deployment,
    ]
    for predictor, address in endpoints.predictors.items():
        args += ["--predictor", f"{predictor}={address.split('://', 1)[-1]}"]
    for node, predictor in endpoints.nodes.items():
        args += ["--node", f"{node}={predictor}"]
    return args


class PortForwardError(ClusterError):
    """A port-forward did not start or its port did not answer; the message has kubectl's words."""


class PortForwards:
    """``kubectl port-forward`` for each arm's Service, started together and stopped together.

        with PortForwards(port_forwards(manifest)) as forwards:   # waits until every port answers
            ...
        # or: forwards = PortForwards(...).start(); ...; forwards.stop()

    A port counts as forwarded once an HTTP request through it gets an HTTP answer (any status):
    kubectl accepts connections before its tunnel to the pod works, so an open port proves nothing.
    """

    def __init__(self, forwards: dict[str, Forward], kubectl: str = "kubectl", timeout: float = 60):
        self.forwards = forwards
        self.kubectl = kubectl
        self.timeout = timeout
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, tempfile._TemporaryFileWrapper] = {}

    def start(self) -> PortForwards:
        try:
            for predictor, forward in self.forwards.items():
                # stdout is one "Handling connection" line per request: never a pipe that could fill
                log = self._logs[predictor] = tempfile.NamedTemporaryFile(
                    prefix="port-forward-", suffix=".log"
                )
                try:
                    self.processes[predictor] = subprocess.Popen(
                        forward.argv(self.kubectl),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,  # its own process group: stop() ends it and nothing else
                    )
                except FileNotFoundError as e:
                    raise PortForwardError(
                        f"{self.kubectl} is not on PATH: install kubectl, or run `{forward.command}` yourself"
                    ) from e
            deadline = time.monotonic() + self.timeout
            for predictor, forward in self.forwards.items():
                self._wait(predictor, forward, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, predictor: str, forward: Forward, deadline: float) -> None:
        import requests

        process = self.processes[predictor]
        while True:
            if process.poll() is not None:
                raise PortForwardError(
                    f"`{forward.command}` exited with {process.returncode}: {self._said(predictor)}"
                )
            try:
                requests.get(f"http://{forward.address}/", timeout=2)
                return  # any HTTP answer: the tunnel reaches the executor
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise PortForwardError(
                    f"`{forward.command}`: nothing answered on {forward.address} within {self.timeout:g} s "
                    f"(is the pod running? `kubectl get pods -n {forward.namespace}`): "
                    f"{self._said(predictor)}"
                )
            time.sleep(0.2)

    def _said(self, predictor: str) -> str:
        log = self._logs.get(predictor)
        if log is None:
            return ""
        with open(log.name, errors="replace") as f:
            return f.read()[-2000:].strip() or "(nothing on stderr)"

    def stop(self, timeout: float = 10) -> None:
        """Stop every port-forward this object started (by its process group), then forget them."""
        for process in self.processes.values():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if process.poll() is not None:
                    break
                try:
                    os.killpg(process.pid, sig)
                    process.wait(timeout=timeout)
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        for log in self._logs.values():
            log.close()
        self.processes.clear()
        self._logs.clear()

    def __enter__(self) -> PortForwards:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
