"""Create or replace the SeldonDeployment with the kubernetes client, then wait until it is Available.

    python -m serving.cluster deploy build/cluster/wines-classifier.yaml --timeout 900

The same as ``kubectl apply -f build/cluster/wines-classifier.yaml`` followed by
``kubectl wait sdep/wines-classifier -n <ns> --for=jsonpath='{.status.state}'=Available``,
from Python (the notebook), with messages that say what is wrong:

- the manifest is checked first (``serving.deployment.parse(local=False)`` and the CRD schema);
- create, or on 409 (it exists) replace it at its current ``resourceVersion``, recording the
  applied manifest in ``kubectl.kubernetes.io/last-applied-configuration`` as ``kubectl apply``
  does (a plain replace would drop it, and a later ``kubectl apply`` would then merge wrongly);
- 404 on create means the namespace does not exist (the API server's Status names it) or else
  that the SeldonDeployment CRD is not installed; 403 that the credentials lack RBAC, 422 that
  the operator's webhook refused it - each said in those words;
- then poll ``status.state`` (Seldon Core v1: ``Creating`` -> ``Available``, or ``Failed`` with a
  ``description``) until ``timeout``, printing each change, and fail with the last state, each
  Deployment's available/desired replicas and the commands to look further.

Seldon Core 1.17.1 never sets ``status.observedGeneration`` (its controller does not write it),
so right after a replace the previous generation's ``Available`` can still be showing. The wait
therefore accepts ``Available`` for a changed spec only once the operator has been seen working
on it (any other state) or once it has held for ``settle`` seconds.

``ensure_namespace`` and ``apply_secret`` are the steps before (``kubectl create namespace``, the
storage Secret), with the kubernetes client's ``CoreV1Api``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serving import deployment as sdep
from serving.cluster.render import ClusterError, plain

GROUP = "machinelearning.seldon.io"
VERSION = "v1"
PLURAL = "seldondeployments"
AVAILABLE, CREATING, FAILED = "Available", "Creating", "Failed"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class DeployError(ClusterError):
    """The cluster refused the deployment or it did not become Available; the message says why."""


class DeployTimeout(DeployError, TimeoutError):
    pass


def custom_objects_api(context: str | None = None):
    """A ``CustomObjectsApi`` from ``~/.kube/config`` (or ``$KUBECONFIG``), else the in-cluster account."""
    from kubernetes import client

    _load_config(context)
    return client.CustomObjectsApi()


def core_api(context: str | None = None):
    """A ``CoreV1Api`` (namespaces, Secrets, Services) with the same credentials."""
    from kubernetes import client

    _load_config(context)
    return client.CoreV1Api()


def _load_config(context: str | None) -> None:
    from kubernetes import config

    try:
        # KUBECONFIG read now, not when the kubernetes package was imported
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), context=context)
    except (config.ConfigException, FileNotFoundError, TypeError) as kube_config_error:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise DeployError(
                f"no Kubernetes credentials: {kube_config_error}. Point KUBECONFIG at your cluster's "
                f"config (`kubectl config current-context` must name it)"
            ) from kube_config_error


@dataclass
class Applied:
    action: str  # "created" or "replaced"
    name: str
    namespace: str
    generation: int | None
    previous_generation: int | None = None
    object: dict = field(default_factory=dict, repr=False)

    @property
    def spec_changed(self) -> bool:
        return self.action == "created" or self.generation != self.previous_generation


def _manifest(manifest: Any, crd) -> dict:
    if isinstance(manifest, (str, os.PathLike)):
        path = Path(manifest)
        try:
            manifest = yaml.safe_load(path.read_text())
        except OSError as e:
            raise DeployError(f"{path}: cannot read the manifest ({e.strerror})") from e
        source = str(path)
    else:
        manifest, source = plain(manifest), "<manifest>"
    try:
        sdep.parse(manifest, source=source, crd=crd, local=False)
    except sdep.DeploymentError as e:
        raise DeployError(str(e)) from e
    for predictor in manifest["spec"]["predictors"]:
        graph = predictor["graph"]
        # a ROUTER graph (serving/model-bandit.yaml): its children hold the models, the router none
        models = graph["children"] if graph.get("type") == "ROUTER" else [graph]
        for uri in (model.get("modelUri", "") for model in models):
            if uri.startswith(("models:/", "runs:/")) or "://" not in uri:
                raise DeployError(
                    f"predictor {predictor['name']!r}: modelUri {uri!r} is not a bucket; the cluster's "
                    f"storage initializer cannot read it. Publish and render first "
                    f"(python -m serving.cluster publish / render)"
                )
    return manifest


def _missing_namespace(e) -> str | None:
    """The namespace a 404 Status says is missing (``details.kind == "namespaces"``), else None.

    The API server answers a missing namespace with a Status naming it, and a missing resource
    type (no CRD) with a bare ``404 page not found``.
    """
    try:
        details = json.loads(getattr(e, "body", None) or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return None
    return details.get("name") if details.get("kind") == "namespaces" else None


def _api_error(e, what: str, resource: str = f"{PLURAL}.{GROUP}") -> DeployError:
    status = getattr(e, "status", None)
    detail = _message(e)
    if status == 404:
        namespace = _missing_namespace(e)
        if namespace:
            return DeployError(
                f"{what}: namespace {namespace!r} does not exist (404): create it first "
                f"(`kubectl create namespace {namespace}`, or deploy.ensure_namespace) with the storage "
                f"Secret in it, see docs/cluster.md. {detail}"
            )
        return DeployError(
            f"{what}: the API server has no {PLURAL}.{GROUP}/{VERSION} (404): install Seldon Core v1.17.1 "
            f"(its CRD), see docs/cluster.md. {detail}"
        )
    if status in (401, 403):
        return DeployError(
            f"{what}: not allowed ({status}): your credentials need the RBAC verbs create, get and update "
            f"on {resource}. {detail}"
        )
    if status == 422:
        return DeployError(
            f"{what}: refused as invalid (422), by the CRD schema or Seldon's webhook: {detail}"
        )
    return DeployError(f"{what}: the API server answered {status} {getattr(e, 'reason', '')}: {detail}")


def _message(e) -> str:
    body = getattr(e, "body", None)
    if body:
        try:
            return json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            return str(body)
    return str(getattr(e, "reason", "") or e)


def apply(manifest: Any, api=None, crd=None, retries: int = 3) -> Applied:
    """Create the SeldonDeployment, or replace it if it exists (``kubectl apply``, without the merge)."""
    from kubernetes.client.exceptions import ApiException

    body = _manifest(manifest, crd)
    # what `kubectl apply` records, so that a later `kubectl apply -f` merges against this manifest
    applied = {k: v for k, v in body.items() if k != "status"}
    applied["metadata"] = {
        k: v for k, v in body["metadata"].items() if k not in ("resourceVersion", "annotations")
    }
    annotations = dict(body["metadata"].get("annotations") or {})
    annotations.pop(LAST_APPLIED, None)
    if annotations:
        applied["metadata"]["annotations"] = annotations
    body["metadata"]["annotations"] = {
        **annotations,
        LAST_APPLIED: json.dumps(applied, sort_keys=True) + "\n",
    }
    api = api or custom_objects_api()
    name = body["metadata"]["name"]
    namespace = body["metadata"].get("namespace") or "default"
    what = f"SeldonDeployment {namespace}/{name}"
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        return Applied(
            "created", name, namespace, (created.get("metadata") or {}).get("generation"), None, created
        )
    except ApiException as e:
        if e.status != 409:
            raise _api_error(e, what) from e
    for attempt in range(retries):
        try:
            current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            replaced = api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
            return Applied(
                "replaced",
                name,
                namespace,
                (replaced.get("metadata") or {}).get("generation"),
                current["metadata"].get("generation"),
                replaced,
            )
        except ApiException as e:
            if e.status == 409 and attempt + 1 < retries:
                continue  # changed between our get and replace: read it again
            raise _api_error(e, what) from e
    raise AssertionError("unreachable")


def _replicas(status: dict) -> str:
    parts = []
    for deployment, s in sorted((status.get("deploymentStatus") or {}).items()):
        parts.append(f"{deployment} {s.get('availableReplicas', 0)}/{s.get('replicas', 0)} available")
    return ", ".join(parts) or "no Deployments reported yet"


def _all_replicas_available(status: dict) -> bool:
    deployments = (status.get("deploymentStatus") or {}).values()
    return all(d.get("availableReplicas", 0) >= d.get("replicas", 0) for d in deployments)


def wait_available(
    name: str,
    namespace: str,
    api=None,
    timeout: float = 900,
    poll: float = 5,
    settle: float = 10,
    spec_changed: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Poll until ``status.state`` is Available (every Deployment's replicas available); return the status.

    ``spec_changed`` (after a replace that changed the spec): see the module docstring.
    Raises ``DeployError`` when the state is Failed, ``DeployTimeout`` after ``timeout`` seconds.
    """
    from kubernetes.client.exceptions import ApiException

    if timeout <= 0 or poll <= 0:
        raise ValueError(f"timeout and poll must be positive, got timeout={timeout} poll={poll}")
    api = api or custom_objects_api()
    what = f"SeldonDeployment {namespace}/{name}"
    start = time.monotonic()
    seen_other_state = not spec_changed
    available_since = None
    last = None
    status: dict = {}
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            status = obj.get("status") or {}
            generation = (obj.get("metadata") or {}).get("generation")
        except ApiException as e:
            if e.status != 404:
                raise _api_error(e, what) from e
            obj, status, generation = None, {}, None
        state = status.get("state") or ("not found" if obj is None else "no status yet")
        message = f"{what}: {state}" + (f" ({status['description']})" if status.get("description") else "")
        if state != AVAILABLE:
            message += f"; {_replicas(status)}"
        if message != last and log:
            log(message)
        last = message
        observed = status.get("observedGeneration")
        current = observed is None or generation is None or observed >= generation
        if state == FAILED:
            raise DeployError(
                f"{what} failed: {status.get('description') or 'no description'}; {_replicas(status)}. "
                f"Look at `kubectl describe sdep {name} -n {namespace}` and the operator's log "
                f"(`kubectl logs -n seldon-system deploy/seldon-controller-manager`)"
            )
        if state == AVAILABLE and current and _all_replicas_available(status):
            if observed is not None or seen_other_state:
                return status
            available_since = time.monotonic() if available_since is None else available_since
            if time.monotonic() - available_since >= settle:
                return status
        else:
            available_since = None
            if state not in (AVAILABLE, "not found"):
                seen_other_state = True
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            raise DeployTimeout(
                f"{what} not Available after {timeout:g} s: last state {state!r}"
                + (f" ({status['description']})" if status.get("description") else "")
                + f"; {_replicas(status)}. Look at "
                f"`kubectl get pods -n {namespace} -l seldon-deployment-id={name}` (an ImagePullBackOff "
                f"or a failing init container `*-model-initializer` is the usual cause) and "
                f"`kubectl describe sdep {name} -n {namespace}`"
            )
        time.sleep(min(poll, max(timeout - elapsed, 0.0)))


def deploy(
    manifest: Any,
    api=None,
    timeout: float = 900,
    poll: float = 5,
    settle: float = 10,
    crd=None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """``apply`` then ``wait_available``; returns the Available status."""
    api = api or custom_objects_api()
    applied = apply(manifest, api=api, crd=crd)
    if log:
        log(f"SeldonDeployment {applied.namespace}/{applied.name} {applied.action}")
    return wait_available(
        applied.name,
        applied.namespace,
        api=api,
        timeout=timeout,
        poll=poll,
        settle=settle,
        spec_changed=applied.action == "replaced" and applied.spec_changed,
        log=log,
    )


def delete(name: str, namespace: str, api=None) -> bool:
    """Delete the SeldonDeployment; False if there was none."""
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise _api_error(e, f"SeldonDeployment {namespace}/{name}") from e


def ensure_namespace(namespace: str, api=None) -> bool:
    """Create the namespace unless it exists (``kubectl create namespace``); True when created."""
    from kubernetes.client.exceptions import ApiException

    api = api or core_api()
    try:
        api.read_namespace(namespace)
        return False
    except ApiException as e:
        if e.status != 404:
            raise _api_error(e, f"namespace {namespace}", "namespaces") from e
    try:
        api.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        return True
    except ApiException as e:
        if e.status == 409:  # created meanwhile
            return False
        raise _api_error(e, f"namespace {namespace}", "namespaces") from e


def apply_secret(secret: dict, api=None) -> str:
    """Create the Secret, or replace it when it exists; ``"created"`` or ``"replaced"``.

    The values travel only to the API server: nothing is written to disk.
    """
    from kubernetes.client.exceptions import ApiException

    api = api or core_api()
    name, namespace = secret["metadata"]["name"], secret["metadata"].get("namespace") or "default"
    what = f"Secret {namespace}/{name}"
    try:
        api.create_namespaced_secret(namespace, secret)
        return "created"
    except ApiException as e:
        if e.status != 409:
            raise _api_error(e, what, "secrets") from e
    try:
        api.replace_namespaced_secret(name, namespace, secret)
        return "replaced"
    except ApiException as e:
        raise _api_error(e, what, "secrets") from e
