"""Read and check a SeldonDeployment before anything starts.

Every manifest is first validated with the project's own schema (``serving/schema.py``: types,
required fields, unknown keys, names, enums). What a schema cannot say is checked here, each with
an error that names the field: traffic adds up to 100, names are unique, ``implementation`` is a
server Seldon knows (and one the local stack serves), ``modelUri`` is set. The same checks run for
the local stack and before a cluster deploy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from serving import schema
from serving.schema import DNS_LABEL as DNS_LABEL  # noqa: F401  (serving/cluster/render.py reads it here)

# Seldon Core v1.17 prepackaged servers (operator's default seldon-config predictor_servers).
KNOWN_IMPLEMENTATIONS = {
    "MLFLOW_SERVER",
    "SKLEARN_SERVER",
    "XGBOOST_SERVER",
    "TENSORFLOW_SERVER",
    "TRITON_SERVER",
    "HUGGINGFACE_SERVER",
    "TEMPO_SERVER",
}
LOCAL_IMPLEMENTATIONS = {"MLFLOW_SERVER"}


class DeploymentError(ValueError):
    """The manifest cannot be served; the message names the file and the field."""


@dataclass(frozen=True)
class Probe:
    path: str = "/health/ping"
    initial_delay: float = 0.0
    period: float = 1.0
    failure_threshold: int = 3
    timeout: float = 1.0

    @classmethod
    def from_spec(cls, spec: dict | None, default: Probe) -> Probe:
        if not spec:
            return default
        http = spec.get("httpGet") or {}
        return cls(
            path=http.get("path", default.path),
            initial_delay=float(spec.get("initialDelaySeconds", default.initial_delay)),
            period=float(spec.get("periodSeconds", default.period)),
            failure_threshold=int(spec.get("failureThreshold", default.failure_threshold)),
            timeout=float(spec.get("timeoutSeconds", default.timeout)),
        )


# Kubernetes' own defaults are period 10 s / threshold 3; locally we poll faster.
DEFAULT_READINESS = Probe(initial_delay=0.0, period=0.5, failure_threshold=240, timeout=2.0)
DEFAULT_LIVENESS = Probe(initial_delay=5.0, period=5.0, failure_threshold=3, timeout=2.0)


@dataclass(frozen=True)
class Predictor:
    name: str
    traffic: int
    node: str  # the graph node: its name is what meta.requestPath reports
    implementation: str
    model_uri: str
    # ``shadow: true``: gets a mirror of the callers' requests (its ``traffic``, 1..100, is the
    # mirror percentage; 0 mirrors every one, as Istio's default), its answers are discarded
    shadow: bool = False
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # the node container's env from componentSpecs
    readiness: Probe = DEFAULT_READINESS
    liveness: Probe = DEFAULT_LIVENESS
    env_secret_ref: str | None = None
    # a ROUTER graph (serving/routers): this predictor's node is the router, ``children`` its
    # MODEL children (each a Predictor named after its node), ``command`` the router container's
    # command; ``orchestrator_env``: svcOrchSpec.env (the executor's, e.g. SELDON_ENABLE_ROUTING_INJECTION)
    children: tuple[Predictor, ...] = ()
    command: tuple[str, ...] = ()
    parameters: tuple[dict, ...] = ()
    orchestrator_env: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The executor's predictor_version label: the predictor's ``version`` annotation."""
        return str(self.annotations.get("version", ""))

    @property
    def labels_json(self) -> str:
        return json.dumps(self.labels)


@dataclass(frozen=True)
class Deployment:
    name: str
    namespace: str
    predictors: tuple[Predictor, ...]
    manifest: dict
    source: str = "<manifest>"

    def predictor(self, name: str) -> Predictor:
        for p in self.predictors:
            if p.name == name:
                return p
        raise KeyError(
            f"no predictor named {name!r} in {self.name}; have {[p.name for p in self.predictors]}"
        )

    @property
    def servers(self) -> tuple[Predictor, ...]:
        """Every node that runs a server: each predictor's root node (a model or a router, keyed by
        the predictor's name) and a router's children (keyed by their node names)."""
        return tuple(s for p in self.predictors for s in (p, *p.children))

    @property
    def traffic(self) -> dict[str, int]:
        return {p.name: p.traffic for p in self.predictors}

    @property
    def ingress_prefix(self) -> str:
        return f"/seldon/{self.namespace}/{self.name}"


def load(path: str | os.PathLike, crd: str | os.PathLike | None = None, local: bool = True) -> Deployment:
    """Parse and check a SeldonDeployment file; raise ``DeploymentError`` naming the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DeploymentError(f"{path}: cannot read the manifest ({e.strerror})") from e
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DeploymentError(f"{path}: not valid YAML: {e}") from e
    return parse(manifest, source=str(path), crd=crd, local=local)


def parse(
    manifest: Any, source: str = "<manifest>", crd: str | os.PathLike | None = None, local: bool = True
) -> Deployment:
    """Check ``manifest`` (plain data); ``local``: also require what the local stack can serve.

    ``crd``: a CRD file to validate against as well as the project's schema (the one a cluster
    serves); without it only the project's schema applies, the same on every machine.
    """

    def fail(message: str) -> DeploymentError:
        return DeploymentError(f"{source}: {message}")

    if not isinstance(manifest, dict):
        raise fail("expected a SeldonDeployment mapping at the top level")
    problems = validate_schema(manifest, crd)
    if problems:
        raise fail(
            f"does not match the SeldonDeployment schema ({schema.SCHEMA_FILE.name}): "
            + "; ".join(problems[:5])
        )

    spec = manifest["spec"]
    if local and spec.get("protocol", "seldon") != "seldon":
        raise fail(f"spec.protocol {spec['protocol']!r}: the local stack speaks the seldon protocol only")
    items = spec["predictors"]
    predictors = [_predictor(item, fail, local) for item in items]

    servers = [s for p in predictors for s in (p, *p.children)]
    for kind, names in (
        ("predictor", [p.name for p in predictors]),
        ("graph node", [s.node for s in servers]),
        ("predictor and router child", [s.name for s in servers]),  # one server each, keyed by name
    ):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise fail(f"{kind} names must be unique, {duplicates} appear more than once")
    predictors = _check_traffic(predictors, items, fail)

    metadata = manifest["metadata"]
    return Deployment(
        name=metadata["name"],
        namespace=metadata.get("namespace") or "default",
        predictors=tuple(predictors),
        manifest=manifest,
        source=source,
    )


def _check_traffic(predictors: list[Predictor], items: list[dict], fail) -> list[Predictor]:
    """The v1.17.1 webhook's rules (``checkTraffic``, ``validateShadow``): at most one shadow, never
    alone; the non-shadows' traffic adds up to 100 when there are two or more of them. A lone main
    predictor (beside a shadow or not) gets every request, so it counts as 100."""
    shadows = [p.name for p in predictors if p.shadow]
    if len(shadows) > 1:
        raise fail(f"Multiple shadows are not allowed ({', '.join(shadows)} have shadow: true)")
    if shadows and len(predictors) == 1:
        raise fail(f"Shadow can not exist as only predictor ({shadows[0]!r} has shadow: true)")
    mains = [i for i, p in enumerate(predictors) if not p.shadow]
    if len(mains) == 1 and (shadows or "traffic" not in items[mains[0]]):
        # the only route (Istio: weight 100); a lone predictor with traffic set must say 100
        predictors[mains[0]] = replace(predictors[mains[0]], traffic=100)
    total = sum(predictors[i].traffic for i in mains)
    if total != 100:
        split = ", ".join(f"{predictors[i].name}={predictors[i].traffic}" for i in mains)
        raise fail(
            f"traffic must add up to 100 across predictors, got {total} ({split}; a shadow is not counted)"
        )
    return predictors


def _predictor(item: dict, fail, local: bool) -> Predictor:
    """One predictor of a manifest the schema has accepted (so names and types are right)."""
    where = f"predictor {item['name']!r}"
    graph = item["graph"]
    node = graph["name"]
    if graph.get("children"):
        return _router(item, fail, local)
    implementation = graph.get("implementation")
    if implementation not in KNOWN_IMPLEMENTATIONS:
        raise fail(
            f"{where}: graph.implementation {implementation!r} is not a Seldon prepackaged server "
            f"(known: {', '.join(sorted(KNOWN_IMPLEMENTATIONS))})"
        )
    if local and implementation not in LOCAL_IMPLEMENTATIONS:
        raise fail(f"{where}: the local stack serves MLFLOW_SERVER only, not {implementation}")
    model_uri = graph.get("modelUri", "").strip()
    if not model_uri:
        raise fail(f"{where}: graph.modelUri is missing")

    container = _container(item, node)
    return Predictor(
        name=item["name"],
        traffic=item.get("traffic", 0),  # Seldon has no default but for a lone predictor (above)
        node=node,
        implementation=implementation,
        model_uri=model_uri,
        shadow=bool(item.get("shadow", False)),
        labels=dict(item.get("labels") or {}),
        annotations=dict(item.get("annotations") or {}),
        env={e["name"]: e.get("value", "") for e in container.get("env", [])},
        readiness=Probe.from_spec(container.get("readinessProbe"), DEFAULT_READINESS),
        liveness=Probe.from_spec(container.get("livenessProbe"), DEFAULT_LIVENESS),
        env_secret_ref=graph.get("envSecretRefName"),
        orchestrator_env=_env((item.get("svcOrchSpec") or {}).get("env")),
    )


def _container(item: dict, node: str) -> dict:
    """The componentSpecs container of graph node ``node`` ({} if none)."""
    container = {}
    for component in item.get("componentSpecs") or []:
        for c in (component.get("spec") or {}).get("containers", []):
            if c["name"] == node:
                container = c
    return container


def _env(items: list | None) -> dict:
    return {e["name"]: e.get("value", "") for e in items or []}


ROUTER_CLASSES = "serving.routers."


def _router(item: dict, fail, local: bool) -> Predictor:
    """A predictor whose graph is a ROUTER with MODEL children (one level: what the gateway serves)."""
    where = f"predictor {item['name']!r}"
    graph = item["graph"]
    node = graph["name"]
    if graph.get("type") != "ROUTER" or graph.get("implementation"):
        raise fail(
            f"{where}: graph {node!r} has children; the local stack serves a single model, "
            "or a type: ROUTER node (a custom container, no implementation) over MODEL children"
        )
    children = []
    for child in graph["children"]:
        if child.get("children") or child.get("type", "MODEL") != "MODEL":
            raise fail(f"{where}: router {node!r}: its children must be MODEL nodes without children")
        children.append(
            _predictor({**item, "name": child["name"], "graph": child, "traffic": 0}, fail, local)
        )
    container = _container(item, node)
    command = tuple(container.get("command", [])) + tuple(container.get("args", []))
    if local and not any(arg.startswith(ROUTER_CLASSES) for arg in command[1:]):
        raise fail(
            f"{where}: router {node!r}: the local stack runs the project's routers; give container "
            f"{node!r} the command [python, -m, serving.microservice, {ROUTER_CLASSES}<Class>, ...]"
        )
    return Predictor(
        name=item["name"],
        traffic=item.get("traffic", 0),
        node=node,
        implementation="",
        model_uri="",
        shadow=bool(item.get("shadow", False)),
        labels=dict(item.get("labels") or {}),
        annotations=dict(item.get("annotations") or {}),
        env=_env(container.get("env")),
        readiness=Probe.from_spec(container.get("readinessProbe"), DEFAULT_READINESS),
        liveness=Probe.from_spec(container.get("livenessProbe"), DEFAULT_LIVENESS),
        children=tuple(children),
        command=command,
        parameters=tuple(graph.get("parameters") or ()),
        orchestrator_env=_env((item.get("svcOrchSpec") or {}).get("env")),
    )


def validate_schema(manifest: Any, crd: str | os.PathLike | None = None) -> list[str]:
    """Errors against the project's schema (and ``crd``'s, when given); [] when valid."""
    problems = schema.errors(manifest)
    if crd is not None:
        problems += [f"{p} (CRD {Path(crd).name})" for p in schema.crd_errors(manifest, crd)]
    return problems


def resolve_model_uri(uri: str) -> str:
    """Check that the local stack can load ``uri``; return a description of what it points at.

    ``models:/name@alias`` and ``models:/name/version`` are looked up in the registry; a folder
    (or ``file://``) must hold an ``MLmodel`` file. Bucket URIs belong to cluster manifests.
    """
    if uri.startswith("models:/"):
        from training.tracking import ModelNotFound, registered_version  # mlflow: only when needed

        try:
            version = registered_version(uri)
        except ModelNotFound as e:
            raise DeploymentError(f"modelUri {e}") from e
        return f"{version.name} version {version.version}"
    if uri.startswith(("gs://", "s3://", "azure://", "https://", "http://")):
        raise DeploymentError(
            f"modelUri {uri}: a bucket URI is for clusters; "
            "locally use models:/<name>@<alias> or a model folder"
        )
    folder = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
    if not (folder / "MLmodel").is_file():
        raise DeploymentError(f"modelUri {uri}: no MLflow model there (no MLmodel file)")
    return str(folder)


def __getattr__(name: str):
    # set_traffic moved to serving.manifest (issue 11); this keeps old callers working until they switch
    if name == "set_traffic":
        from serving.manifest import set_traffic

        return set_traffic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
