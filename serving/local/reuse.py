"""Whether a running stack is the one ``up`` would start now: what a stack loads (each registry
alias resolved to a model version at start) and, compared with its recorded plan, every difference
in manifest, tracking store, model versions and port. ``LocalStack.up`` reuses a stack only when
there is none."""

from __future__ import annotations

import hashlib
from pathlib import Path

from serving import deployment as sdep
from serving.local.supervisor import Plan


def loaded_models(deployment: sdep.Deployment) -> dict[str, dict[str, str]]:
    """What each predictor's model server will load: registry aliases resolved to versions now."""
    from training.tracking import ModelNotFound, registered_version

    models = {}
    for p in deployment.servers:
        if p.children:
            continue  # a router: no model
        if p.model_uri.startswith("models:/"):
            try:
                version = registered_version(p.model_uri)
            except ModelNotFound as e:
                raise sdep.DeploymentError(f"predictor {p.name!r}: {e}") from e
            models[p.name] = {
                "uri": p.model_uri,
                "served": f"models:/{version.name}/{version.version}",
                "version": f"{version.name} version {version.version}",
            }
        else:
            folder = sdep.resolve_model_uri(p.model_uri)  # a model folder (buckets are refused)
            mlmodel = hashlib.sha256((Path(folder) / "MLmodel").read_bytes()).hexdigest()[:12]
            models[p.name] = {"uri": p.model_uri, "served": p.model_uri, "version": f"MLmodel {mlmodel}"}
    return models


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def differences(
    plan: Plan | None,
    working_copy: Path,
    manifest: Path,
    tracking_uri: str,
    models: dict[str, dict[str, str]],
    port: int | None,
    scrape_interval: float | None = None,
) -> list[str]:
    """Why the running stack (``plan``, serving ``working_copy``) is not what `up(manifest, port)`
    would start now; [] if it is."""
    if plan is None or not plan.models:
        return ["it was started by an older version of serving.local (no record of what it loaded)"]
    found = []
    try:
        served_now = sha256(working_copy)
    except OSError:
        served_now = None
    given = sha256(manifest)
    if plan.served_sha256 and served_now == plan.served_sha256 and given == plan.manifest_sha256:
        pass  # served as `up` wrote it (its request-logger URLs on free ports)
    elif served_now != given and given == plan.manifest_sha256:
        found.append(
            f"its working copy {working_copy} was edited after `up` (a traffic split changed, "
            f"e.g. by promotion), so it no longer serves {manifest} as it is"
        )
    elif served_now != given:
        found.append(
            f"it serves {working_copy}, copied from {plan.source}, whose content differs from {manifest}"
        )
    if plan.tracking_uri != tracking_uri:
        found.append(f"it reads the tracking store {plan.tracking_uri}, not {tracking_uri}")
    for name, model in models.items():
        was = plan.models.get(name)
        if was is None:
            found.append(f"it has no predictor {name!r}")
        elif was["version"] != model["version"]:
            found.append(
                f"predictor {name!r} serves {was['version']}, but {model['uri']} now names {model['version']}"
            )
    for name in sorted(set(plan.models) - set(models)):
        found.append(f"it serves a predictor {name!r} that the manifest does not have")
    if port is not None and port != plan.ingress_port and not (port == 0 and plan.requested_port == 0):
        asked = "any free port (0)" if port == 0 else f"port {port}"
        found.append(f"its ingress listens on port {plan.ingress_port}, and {asked} was asked for")
    if scrape_interval and scrape_interval != plan.scrape_interval:
        found.append(
            f"its Prometheus scrapes every {plan.scrape_interval:g} s, "
            f"and {scrape_interval:g} s was asked for"
        )
    return found
