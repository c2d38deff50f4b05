"""The project's own JSON schema for the SeldonDeployments it accepts (``serving/schema/``).

Written for this project from Seldon Core v1's API types, so every clone validates manifests the
same way, with or without Seldon's CRD at hand. Where it is stricter than the v1.17.1 CRD, and
why, is listed in ``serving/schema/README.md``; ``tests/serving/test_schema.py`` holds the two
side by side on a corpus of valid and broken manifests.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "seldondeployment-v1.json"


@functools.cache
def document() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


# one definition of a Kubernetes name: the schema's, also used for values checked outside a manifest
DNS_LABEL = re.compile(document()["definitions"]["dnsLabel"]["pattern"])


@functools.cache
def _validator():
    import jsonschema

    return jsonschema.Draft7Validator(document())


def errors(manifest: Any) -> list[str]:
    """What is wrong with ``manifest``, one line per problem naming the field; [] when it is valid."""
    return _messages(_validator(), manifest)


def crd_errors(manifest: Any, crd: str | os.PathLike) -> list[str]:
    """The same, against a CRD file's v1 ``openAPIV3Schema`` (for example the one a cluster serves:
    ``kubectl get crd seldondeployments.machinelearning.seldon.io -o yaml``)."""
    return _messages(_crd_validator(str(crd)), manifest)


@functools.cache
def _crd_validator(path: str):
    import jsonschema
    import yaml

    crd = yaml.safe_load(Path(path).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def _messages(validator, manifest: Any) -> list[str]:
    found = sorted(validator.iter_errors(manifest), key=lambda e: [str(p) for p in e.absolute_path])
    return [_message(e) for e in found]


def _message(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<root>"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        described = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            described.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        return f"{path}: unknown key {', '.join(described)}; this object takes {', '.join(known)}"
    if "errorMessage" in schema and error.validator not in ("required", "additionalProperties"):
        return f"{path} {schema['errorMessage']}, got {error.instance!r}"
    return f"{path}: {error.message}"
