"""Editing manifest files in place, keeping their comments and layout (ruamel's round trip).

The one ruamel set-up of the project: promotion's traffic split and the cluster rendering both
load and write manifests through it, so a rewritten file differs only where a value changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from serving import deployment


def round_trip() -> YAML:
    """A ruamel loader/dumper in the style of serving/model-a-b.yaml."""
    document = YAML()
    document.preserve_quotes = True
    document.indent(mapping=2, sequence=4, offset=2)
    document.width = 120
    return document


def load(path: str | os.PathLike):
    """A manifest file as a ruamel document (comments kept)."""
    return round_trip().load(Path(path).read_text())


def plain(node: Any) -> Any:
    """ruamel's commented containers -> plain dicts and lists (what json, jsonschema and k8s want)."""
    return json.loads(json.dumps(node))


def write(document, path: str | os.PathLike) -> None:
    """Write atomically: a reader (the gateway reloading the manifest) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        round_trip().dump(document, f)
    os.replace(tmp, path)


def set_traffic(path: str | os.PathLike, split: dict[str, int]) -> dict[str, int]:
    """Rewrite the predictors' traffic weights in a manifest file, keeping its comments and layout.

    The new split is checked like any manifest before the file is touched; returns the old split.
    """
    document = load(path)
    predictors = document["spec"]["predictors"]
    names = [p.get("name") for p in predictors]
    unknown = sorted(set(split) - set(names))
    if unknown:
        raise deployment.DeploymentError(f"{path}: no predictors named {unknown}; have {names}")
    old = {p["name"]: p.get("traffic", 0) for p in predictors}
    for predictor in predictors:
        predictor["traffic"] = int(split.get(predictor["name"], 0))
    deployment.parse(plain(document), source=str(path))  # refuse a split that does not add up
    write(document, path)
    return old
