"""Installing Seldon Core 1.17.1 for this project: its Helm values and the Istio Gateway.

``seldon_core_values`` registers our model server image as ``MLFLOW_SERVER`` (seldon protocol)
through ``predictor_servers``; the operator reads the ``seldon-config`` ConfigMap on every
reconcile of a SeldonDeployment, so a changed image reaches the next pods it creates or updates.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping

import yaml

from serving.cluster import MANIFESTS, ClusterError

SELDON_GATEWAY = "istio-system/seldon-gateway"  # the Istio Gateway in manifests/istio-gateway.yaml


def split_image(image: str) -> tuple[str, str]:
    """``registry/repo:tag`` -> ``("registry/repo", "tag")``; a digest stays on the repository."""
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise ClusterError(
            f"image must be a reference like ghcr.io/you/mlflow-seldon-server:0.1.0, got {image!r}"
        )
    if "@sha256:" in image:
        return image, ""
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag, or the colon was a registry port
        raise ClusterError(
            f"image {image!r} has no tag: pin one (e.g. :0.1.0) or a digest, never an implicit :latest"
        )
    if tag == "latest":
        raise ClusterError(
            f"image {image!r}: ':latest' moves under a running deployment; pin a version or a digest"
        )
    return name, tag


def seldon_core_values(image: str, istio_gateway: str = SELDON_GATEWAY) -> dict:
    """Helm values for the seldon-core-operator 1.17.1 chart.

    Istio routing on, and ``MLFLOW_SERVER`` (seldon protocol) served by our image. The chart writes
    ``predictor_servers`` as JSON into the ``seldon-config`` ConfigMap; the operator looks the
    implementation up there (``{"protocols": {"seldon": {"image", "defaultImageVersion"}}}``) and
    runs ``image:defaultImageVersion`` with ``PREDICTIVE_UNIT_PARAMETERS`` carrying
    ``model_uri=/mnt/models``. Helm merges these keys into the chart's defaults, so every other
    server (and MLFLOW_SERVER's v2 protocol entry) keeps Seldon's images.
    """
    repository, tag = split_image(image)
    return {
        "istio": {"enabled": True, "gateway": istio_gateway},
        "predictor_servers": {
            "MLFLOW_SERVER": {"protocols": {"seldon": {"image": repository, "defaultImageVersion": tag}}}
        },
    }


def prepack_image(values: Mapping, implementation: str, protocol: str = "seldon") -> str:
    """The image the operator runs for ``implementation`` given these values (PrepackImageName)."""
    try:
        config = values["predictor_servers"][implementation]["protocols"][protocol]
    except (KeyError, TypeError) as e:
        raise ClusterError(f"no predictor_servers.{implementation}.protocols.{protocol} in the values") from e
    version = config.get("defaultImageVersion") or ""
    return f"{config['image']}:{version}" if version else config["image"]


def seldon_config_patch(image: str, predictor_servers_json: str) -> dict:
    """A ``kubectl patch`` body for an existing install's ``seldon-config`` ConfigMap.

    ``predictor_servers_json`` is the ConfigMap's current value (``kubectl get cm seldon-config -n
    seldon-system -o jsonpath='{.data.predictor_servers}'``); only MLFLOW_SERVER's seldon image changes.
    """
    try:
        servers = json.loads(predictor_servers_json)
    except json.JSONDecodeError as e:
        raise ClusterError(f"predictor_servers is not JSON: {e}") from e
    if not isinstance(servers, dict):
        raise ClusterError("predictor_servers must be a JSON object of server name -> config")
    servers = copy.deepcopy(servers)
    override = seldon_core_values(image)["predictor_servers"]["MLFLOW_SERVER"]["protocols"]["seldon"]
    servers.setdefault("MLFLOW_SERVER", {}).setdefault("protocols", {})["seldon"] = override
    return {"data": {"predictor_servers": json.dumps(servers, sort_keys=True)}}


def istio_gateway() -> dict:
    return yaml.safe_load((MANIFESTS / "istio-gateway.yaml").read_text())
