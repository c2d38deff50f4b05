"""Where feedback.py sends requests on a cluster.

Predictions go through the ingress, so the traffic split picks the arm: Seldon Core's Istio
VirtualService routes ``/seldon/<namespace>/<sdep>/`` to the predictors' Services with the
weights of ``traffic``, so the URL is ``http://<ingress>/seldon/<ns>/<sdep>/api/v1.0/predictions``.

Feedback goes to the arm that answered, through that predictor's own Service, which the operator
creates per predictor as ``<sdep>-<predictor>`` (``seldon.io/svc-name`` annotation overrides it; a
name over 63 characters becomes ``seldon-<md5 of it>``), port 8000 (``http``, the executor's REST
API: ``/api/v1.0/feedback``). Two ways to reach it:

- from a laptop, ``kubectl port-forward -n <ns> svc/<sdep>-<predictor> <local port>:8000`` per
  arm (``port_forward_commands``), then ``http://127.0.0.1:<local port>``;
- from inside the cluster (a Job), ``http://<sdep>-<predictor>.<ns>.svc.cluster.local:8000``.

``cluster_endpoints(...).predictor_urls`` is the mapping predictor name -> base URL, and
``feedback_args()`` the matching ``python feedback.py --ingress ... --predictor ...`` arguments.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from serving import deployment as sdep
from serving.cluster.render import ClusterError

EXECUTOR_PORT = 8000  # the executor's REST port on the predictor Service (Helm value executor.port)
SVC_NAME_ANNOTATION = "seldon.io/svc-name"
ISTIO_INGRESS = ("istio-system", "istio-ingressgateway")  # namespace and Service of Istio's default gateway
API = "/api/v1.0"
VIAS = ("port-forward", "cluster-dns")


def predictor_service(deployment: str, predictor: str, annotations: dict | None = None) -> str:
    """The per-predictor Service the operator creates (Seldon Core v1.17.1 ``GetPredictorKey``)."""
    if annotations and annotations.get(SVC_NAME_ANNOTATION):
        return annotations[SVC_NAME_ANNOTATION]
    name = f"{deployment}-{predictor}"
    return name if len(name) <= 63 else "seldon-" + hashlib.md5(name.encode()).hexdigest()


def _base_url(value: str, what: str) -> str:
    """``host``, ``host:port`` or ``http(s)://host[:port]`` -> ``scheme://host[:port]``."""
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
        parts.port
    except ValueError as e:
        raise ClusterError(f"{what} {value!r}: {e}") from e
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class ClusterEndpoints:
    ingress_url: str  # http://<ingress host[:port]>
    namespace: str
    deployment: str
    predictor_urls: dict  # predictor name -> base URL of its Service (port-forward or cluster DNS)
    services: dict  # predictor name -> Service name
    nodes: dict  # graph node name (what meta.requestPath names) -> predictor name
    local_ports: dict = field(default_factory=dict)  # predictor -> local port (port-forward only)

    @property
    def ingress_prefix(self) -> str:
        return f"{self.ingress_url}/seldon/{self.namespace}/{self.deployment}{API}"

    @property
    def predictions_url(self) -> str:
        return f"{self.ingress_prefix}/predictions"

    @property
    def ingress_feedback_url(self) -> str:
        """Feedback through the ingress: split at random like predictions - the flaw feedback.py measures."""
        return f"{self.ingress_prefix}/feedback"

    def feedback_url(self, predictor: str) -> str:
        if predictor not in self.predictor_urls:
            raise KeyError(f"no predictor {predictor!r}; have {sorted(self.predictor_urls)}")
        return f"{self.predictor_urls[predictor]}{API}/feedback"

    def port_forward_commands(self) -> list[str]:
        """One ``kubectl port-forward`` per arm (run each in its own terminal, or in the background)."""
        if not self.local_ports:
            return []
        return [
            f"kubectl port-forward -n {self.namespace} svc/{self.services[p]} {port}:{EXECUTOR_PORT}"
            for p, port in self.local_ports.items()
        ]

    def feedback_args(self) -> list[str]:
        """Arguments for ``python feedback.py`` (its cluster mode takes host:port addresses)."""
        args = [
            "--ingress",
            self.ingress_url.split("://", 1)[1],
            "--namespace",
            self.namespace,
            "--deployment",
            self.deployment,
        ]
        for predictor, url in self.predictor_urls.items():
            args += ["--predictor", f"{predictor}={url.split('://', 1)[1]}"]
        for node, predictor in self.nodes.items():
            args += ["--node", f"{node}={predictor}"]
        return args


def cluster_endpoints(
    manifest: str | os.PathLike | dict | sdep.Deployment,
    ingress: str,
    via: str = "port-forward",
    local_ports: dict[str, int] | None = None,
    first_local_port: int = 9001,
) -> ClusterEndpoints:
    """Endpoints of a rendered SeldonDeployment on a cluster.

    ``ingress``: the Istio ingress gateway as ``host[:port]`` or a URL - its load balancer address
    (``kubectl get svc -n istio-system istio-ingressgateway``), ``127.0.0.1:8080`` behind
    ``kubectl port-forward -n istio-system svc/istio-ingressgateway 8080:80``, or, from a Job,
    ``istio-ingressgateway.istio-system.svc.cluster.local``.
    ``via``: ``port-forward`` (predictor URLs on 127.0.0.1, ports ``local_ports`` or consecutive
    from ``first_local_port``) or ``cluster-dns`` (the Services' in-cluster names).
    """
    if isinstance(manifest, sdep.Deployment):
        deployment = manifest
    elif isinstance(manifest, dict):
        deployment = sdep.parse(manifest, local=False)
    else:
        deployment = sdep.load(manifest, local=False)
    if via not in VIAS:
        raise ClusterError(f"via must be one of {VIAS}, got {via!r}")
    ingress_url = _base_url(ingress, "ingress")
    names = [p.name for p in deployment.predictors]
    services = {
        p.name: predictor_service(deployment.name, p.name, p.annotations) for p in deployment.predictors
    }
    ports: dict[str, int] = {}
    if via == "port-forward":
        unknown = sorted(set(local_ports or {}) - set(names))
        if unknown:
            raise ClusterError(
                f"local_ports names {unknown}, which are not predictors of {deployment.name} ({names})"
            )
        ports = {
            name: int((local_ports or {}).get(name, first_local_port + i)) for i, name in enumerate(names)
        }
        bad = {n: p for n, p in ports.items() if not 1024 <= p <= 65535}
        if bad:
            raise ClusterError(f"local ports must be 1024-65535 (no root needed), got {bad}")
        if len(set(ports.values())) != len(ports):
            raise ClusterError(f"each arm needs its own local port, got {ports}")
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    else:
        urls = {
            name: f"http://{services[name]}.{deployment.namespace}.svc.cluster.local:{EXECUTOR_PORT}"
            for name in names
        }
    return ClusterEndpoints(
        ingress_url=ingress_url,
        namespace=deployment.namespace,
        deployment=deployment.name,
        predictor_urls=urls,
        services=services,
        nodes={p.node: p.name for p in deployment.predictors},
        local_ports=ports,
    )
