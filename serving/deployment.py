"""Read and check a SeldonDeployment before anything starts.

The CRD's OpenAPI schema (when available) catches malformed manifests, but it is loose: it does
not check that traffic adds up to 100, that names are unique, that ``implementation`` is a server
Seldon knows, or that ``modelUri`` points at a model. Those are checked here, each with an error
that names the field. The same checks run for the local stack and before a cluster deploy.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "machinelearning.seldon.io/v1"
KIND = "SeldonDeployment"

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

CRD_ENV = "SELDON_CRD"
# The CRD from Seldon Core v1.17.1 sits beside the checkout on development machines and in CI; a
# fresh clone has none and the schema check is skipped (the checks below still run).
DEFAULT_CRD = (
    Path(__file__).resolve().parents[2] / "shared/reference/seldon-core-v1.17.1/seldondeployments.crd.yaml"
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # the node container's env from componentSpecs
    readiness: Probe = DEFAULT_READINESS
    liveness: Probe = DEFAULT_LIVENESS
    env_secret_ref: str | None = None

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
    def traffic(self) -> dict[str, int]:
        return {p.name: p.traffic for p in self.predictors}

    def service_name(self, predictor: str) -> str:
        """The per-predictor Service the operator creates: ``<sdep>-<predictor>``."""
        return f"{self.name}-{predictor}"

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
    def fail(message: str) -> DeploymentError:
        return DeploymentError(f"{source}: {message}")

    if not isinstance(manifest, dict):
        raise fail("expected a SeldonDeployment mapping at the top level")
    if manifest.get("apiVersion") != API_VERSION:
        raise fail(
            f"apiVersion must be {API_VERSION!r} (served by Seldon Core v1), got {manifest.get('apiVersion')!r}"
        )
    if manifest.get("kind") != KIND:
        raise fail(f"kind must be {KIND!r}, got {manifest.get('kind')!r}")
    schema_errors = validate_schema(manifest, crd)
    if schema_errors:
        raise fail("does not match the SeldonDeployment CRD schema: " + "; ".join(schema_errors[:5]))

    metadata = manifest.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        raise fail(f"metadata.name must be a DNS-1123 label (lower case, digits, '-'), got {name!r}")
    namespace = metadata.get("namespace") or "default"
    if not isinstance(namespace, str) or not DNS_LABEL.match(namespace):
        raise fail(f"metadata.namespace must be a DNS-1123 label, got {namespace!r}")

    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        raise fail("spec is missing")
    items = spec.get("predictors")
    if not isinstance(items, list) or not items:
        raise fail("spec.predictors must list at least one predictor")
    if spec.get("protocol", "seldon") != "seldon":
        raise fail(f"spec.protocol {spec.get('protocol')!r}: the local stack speaks the seldon protocol only")

    predictors = [_predictor(item, i, fail, local) for i, item in enumerate(items)]

    for kind, names in (
        ("predictor", [p.name for p in predictors]),
        ("graph node", [p.node for p in predictors]),
    ):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise fail(f"{kind} names must be unique, {duplicates} appear more than once")
    if len(predictors) == 1 and predictors[0].traffic == 0 and "traffic" not in items[0]:
        predictors[0] = _replace(predictors[0], traffic=100)  # Seldon's default for a lone predictor
    total = sum(p.traffic for p in predictors)
    if total != 100:
        split = ", ".join(f"{p.name}={p.traffic}" for p in predictors)
        raise fail(f"traffic must add up to 100 across predictors, got {total} ({split})")

    return Deployment(
        name=name, namespace=namespace, predictors=tuple(predictors), manifest=manifest, source=source
    )


def _predictor(item: Any, i: int, fail, local: bool) -> Predictor:
    where = f"spec.predictors[{i}]"
    if not isinstance(item, dict):
        raise fail(f"{where} must be a mapping")
    name = item.get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        raise fail(f"{where}.name must be a DNS-1123 label, got {name!r}")
    where = f"predictor {name!r}"
    traffic = item.get("traffic", 0)
    if isinstance(traffic, bool) or not isinstance(traffic, int) or not 0 <= traffic <= 100:
        raise fail(f"{where}: traffic must be a whole number from 0 to 100, got {traffic!r}")
    graph = item.get("graph")
    if not isinstance(graph, dict):
        raise fail(f"{where}: graph is missing")
    node = graph.get("name")
    if not isinstance(node, str) or not DNS_LABEL.match(node):
        raise fail(f"{where}: graph.name must be a DNS-1123 label, got {node!r}")
    if graph.get("children"):
        raise fail(f"{where}: graph {node!r} has children; the local stack serves single-model graphs")
    implementation = graph.get("implementation")
    if implementation not in KNOWN_IMPLEMENTATIONS:
        raise fail(
            f"{where}: graph.implementation {implementation!r} is not a Seldon prepackaged server "
            f"(known: {', '.join(sorted(KNOWN_IMPLEMENTATIONS))})"
        )
    if local and implementation not in LOCAL_IMPLEMENTATIONS:
        raise fail(f"{where}: the local stack serves MLFLOW_SERVER only, not {implementation}")
    model_uri = graph.get("modelUri")
    if not isinstance(model_uri, str) or not model_uri.strip():
        raise fail(f"{where}: graph.modelUri is missing")

    container = {}
    for component in item.get("componentSpecs") or []:
        for c in ((component or {}).get("spec") or {}).get("containers") or []:
            if isinstance(c, dict) and c.get("name") == node:
                container = c
    env = {
        e["name"]: str(e.get("value", ""))
        for e in container.get("env") or []
        if isinstance(e, dict) and "name" in e
    }
    return Predictor(
        name=name,
        traffic=traffic,
        node=node,
        implementation=implementation,
        model_uri=model_uri.strip(),
        labels=dict(item.get("labels") or {}),
        annotations=dict(item.get("annotations") or {}),
        env=env,
        readiness=Probe.from_spec(container.get("readinessProbe"), DEFAULT_READINESS),
        liveness=Probe.from_spec(container.get("livenessProbe"), DEFAULT_LIVENESS),
        env_secret_ref=graph.get("envSecretRefName"),
    )


def _replace(predictor: Predictor, **changes) -> Predictor:
    from dataclasses import replace

    return replace(predictor, **changes)


def crd_path(crd: str | os.PathLike | None = None) -> Path | None:
    """The CRD file to validate against: the argument, ``$SELDON_CRD``, or the reference copy."""
    for candidate in (crd, os.environ.get(CRD_ENV), DEFAULT_CRD):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


_validators: dict[Path, Any] = {}


def validate_schema(manifest: dict, crd: str | os.PathLike | None = None) -> list[str]:
    """Errors against the CRD's openAPIV3Schema; [] when valid or when no CRD is available."""
    path = crd_path(crd)
    if path is None:
        return []
    if path not in _validators:
        import jsonschema

        document = yaml.safe_load(path.read_text())
        version = next(v for v in document["spec"]["versions"] if v["name"] == "v1")
        _validators[path] = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    errors = sorted(_validators[path].iter_errors(manifest), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def resolve_model_uri(uri: str) -> str:
    """Check that the local stack can load ``uri``; return a description of what it points at.

    ``models:/name@alias`` and ``models:/name/version`` are looked up in the registry; a folder
    (or ``file://``) must hold an ``MLmodel`` file. Bucket URIs belong to cluster manifests.
    """
    if uri.startswith("models:/"):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        rest = uri[len("models:/") :]
        client = MlflowClient()
        try:
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = rest.partition("/")
                version = client.get_model_version(name, number)
        except MlflowException as e:
            raise DeploymentError(
                f"modelUri {uri}: not found in the MLflow registry ({e.message.splitlines()[0]})"
            ) from e
        return f"{version.name} version {version.version}"
    if uri.startswith(("gs://", "s3://", "azure://", "https://", "http://")):
        raise DeploymentError(
            f"modelUri {uri}: a bucket URI is for clusters; locally use models:/<name>@<alias> or a model folder"
        )
    folder = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
    if not (folder / "MLmodel").is_file():
        raise DeploymentError(f"modelUri {uri}: no MLflow model there (no MLmodel file)")
    return str(folder)


def set_traffic(path: str | os.PathLike, split: dict[str, int]) -> dict[str, int]:
    """Rewrite the predictors' traffic weights in a manifest file, keeping its comments and layout.

    The new split is checked like any manifest before the file is touched; returns the old split.
    """
    from ruamel.yaml import YAML

    path = Path(path)
    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.indent(mapping=2, sequence=4, offset=2)  # the style of serving/model-a-b.yaml
    document = round_trip.load(path.read_text())
    names = [p.get("name") for p in document["spec"]["predictors"]]
    unknown = sorted(set(split) - set(names))
    if unknown:
        raise DeploymentError(f"{path}: no predictors named {unknown}; have {names}")
    old = {p["name"]: p.get("traffic", 0) for p in document["spec"]["predictors"]}
    for predictor in document["spec"]["predictors"]:
        predictor["traffic"] = int(split.get(predictor["name"], 0))
    plain = yaml.safe_load(json.dumps(_plain(document)))
    parse(plain, source=str(path))  # refuse a split that does not add up before writing
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        round_trip.dump(document, f)
    os.replace(tmp, path)  # atomic: the gateway never reads a half-written file
    return old


def _plain(node):
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
