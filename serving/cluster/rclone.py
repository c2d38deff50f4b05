"""The storage Secrets Seldon's rclone init container reads to copy ``modelUri`` into ``/mnt/models``.

The graph's ``envSecretRefName`` names the Secret; the operator hands it (``envFrom``) to the init
container, which runs ``rclone copy <modelUri> /mnt/models`` (Seldon Core v1.17.1,
operator/controllers/model_initializer_injector.go). The Secrets come from the templates in
``manifests/`` (``${VAR}`` placeholders, filled from a mapping such as ``os.environ``).

Two traps, both refused here before anything reaches a cluster:

- the remote name (seldon-core#3839): rclone reads ``s3://bucket/path`` with the remote called
  ``s3``, configured by ``RCLONE_CONFIG_S3_*`` variables, and ``gs://...`` with
  ``RCLONE_CONFIG_GS_*``; a Secret for the other remote, or lower-case keys, is silently ignored
  and the init container fails with "directory not found";
- no Secret at all: the 1.17.1 storage-initializer image configures only an anonymous ``gs``
  remote (``RCLONE_CONFIG_GS_TYPE=google cloud storage``, ``RCLONE_CONFIG_GS_ANONYMOUS=true`` in
  its Dockerfile), so without a Secret every ``s3://`` URI fails and a private ``gs://`` bucket is
  read anonymously (denied). S3 through the nodes' IAM role needs a Secret too, one that tells
  rclone to take the credentials from the environment: the ``s3-iam`` template.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path

import yaml

from serving.cluster import MANIFESTS, ClusterError
from serving.cluster.buckets import BUCKET_SCHEMES, split_bucket_uri

TEMPLATES = {
    "s3": MANIFESTS / "rclone-secret-s3.yaml",  # AWS S3 with an access key
    "s3-iam": MANIFESTS / "rclone-secret-s3-iam.yaml",  # AWS S3 through the nodes' / pods' IAM role
    "minio": MANIFESTS / "rclone-secret-minio.yaml",  # MinIO or any S3-compatible endpoint
    "gcs": MANIFESTS / "rclone-secret-gcs.yaml",  # Google Cloud Storage with a service-account key
}
DEFAULT_SECRET_NAME = "seldon-rclone-secret"
# the remotes the 1.17.1 storage-initializer image configures by itself (anonymous gs only)
BUILT_IN_REMOTES = {"GS"}
_RCLONE_KEY = re.compile(r"^RCLONE_CONFIG_([A-Z0-9]+)_[A-Z0-9_]+$")


def _template(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _variant_path(variant: str) -> Path:
    if variant not in TEMPLATES:
        raise ClusterError(f"no rclone Secret template {variant!r}; have {', '.join(TEMPLATES)}")
    return TEMPLATES[variant]


def placeholders(variant: str) -> list[str]:
    """The ``${VAR}`` names a storage Secret template needs."""
    template = _template(_variant_path(variant))
    names = []
    for value in template["stringData"].values():
        for match in string.Template.pattern.finditer(str(value)):
            name = match.group("braced") or match.group("named")
            if name and name not in names:
                names.append(name)
    return names


def rclone_secret(
    variant: str,
    values: Mapping[str, str],
    name: str = DEFAULT_SECRET_NAME,
    namespace: str | None = None,
    model_uri: str | None = None,
) -> dict:
    """The storage Secret from a template, ``${VAR}`` filled from ``values`` (e.g. ``os.environ``).

    Values are filled after the YAML is parsed, so a multi-line service-account JSON is safe.
    With ``model_uri`` the Secret is also checked against the bucket it must open.
    """
    secret = _template(_variant_path(variant))
    missing = [n for n in placeholders(variant) if not values.get(n)]
    if missing:
        raise ClusterError(
            f"the {variant} storage Secret needs {', '.join(missing)} (set them in the environment)"
        )
    secret["metadata"]["name"] = name
    if namespace:
        secret["metadata"]["namespace"] = namespace
    secret["stringData"] = {
        k: string.Template(str(v)).substitute(values) for k, v in secret["stringData"].items()
    }
    if model_uri:
        check_secret_for_uri(secret, model_uri)
    return secret


def rclone_remotes(secret: Mapping) -> set[str]:
    """Remote names (upper case) that a Secret configures, by its ``RCLONE_CONFIG_<REMOTE>_TYPE`` keys."""
    data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
    bad = sorted(k for k in data if k.upper().startswith("RCLONE_CONFIG_") and not _RCLONE_KEY.match(k))
    if bad:
        raise ClusterError(
            f"Secret {secret.get('metadata', {}).get('name')!r}: rclone only reads upper-case "
            f"RCLONE_CONFIG_<REMOTE>_<OPTION> variables; fix {bad}"
        )
    return {m.group(1) for k in data if (m := _RCLONE_KEY.match(k)) and k.endswith("_TYPE")}


def check_secret_for_uri(secret: Mapping, model_uri: str) -> None:
    """Refuse a Secret that does not configure the rclone remote ``model_uri`` is read with."""
    scheme, _, _ = split_bucket_uri(model_uri)
    remote = BUCKET_SCHEMES[scheme]
    remotes = rclone_remotes(secret)
    if remote not in remotes:
        raise ClusterError(
            f"modelUri {model_uri} is read by rclone's remote {scheme!r}, but Secret "
            f"{secret.get('metadata', {}).get('name')!r} configures {sorted(remotes) or 'no remote'}: "
            f"its keys must be RCLONE_CONFIG_{remote}_TYPE, RCLONE_CONFIG_{remote}_... "
            f"(use the {'gcs' if scheme == 'gs' else 's3, s3-iam or minio'} template)"
        )


def check_without_secret(model_uri: str) -> None:
    """Refuse a ``modelUri`` the storage initializer cannot read without a Secret (every ``s3://``)."""
    scheme, _, _ = split_bucket_uri(model_uri)
    if BUCKET_SCHEMES[scheme] not in BUILT_IN_REMOTES:
        raise ClusterError(
            f"modelUri {model_uri} needs a storage Secret (envSecretRefName): Seldon Core 1.17.1's rclone "
            f"storage initializer has no {scheme!r} remote of its own, even when the nodes' IAM role can "
            f"read the bucket. Create one (python -m serving.cluster rclone-secret s3|s3-iam|minio) and "
            f"render with --secret"
        )
