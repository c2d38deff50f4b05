"""Copy each registered arm's model folder to a bucket the cluster can read.

    python -m serving.cluster publish s3://my-bucket/mlflow-seldon      # or gs://..., file://...

On a cluster, ``modelUri`` must be a bucket folder: Seldon's rclone storage initializer copies it
into ``/mnt/models`` before the model server starts, and it cannot read an MLflow registry
(``models:/...``, seldon-core#4906). For every predictor of ``serving/model-a-b.yaml``:

1. resolve its ``models:/wines-classifier@<alias>`` to a registered version;
2. download that version's model folder (``MLmodel``, ``model.pkl``, ``requirements.txt``...) from
   the tracking server's artifact store;
3. copy it to ``<bucket>/<model name>/<version>/`` with fsspec (s3fs, gcsfs; ``file://`` too) or,
   for ``gs://`` when asked, with ``gsutil -m rsync -c``;
4. read every file back and compare SHA-256 with the source: the published folder is byte-identical.

A version's folder is immutable: publishing the same version again with identical files is a
no-op, with different files it is refused (``overwrite=True`` to force). Promotion therefore
never changes the files under a running pod; it re-renders the manifest with another version.

Credentials come from the usual places: for s3 ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
(or a profile), ``AWS_ENDPOINT_URL`` or ``storage_options={"endpoint_url": ...}`` for MinIO; for
gs ``GOOGLE_APPLICATION_CREDENTIALS`` or ``gcloud auth application-default login``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from serving.cluster import ClusterError
from serving.cluster.buckets import join_uri, split_bucket_uri
from serving.cluster.render import LOCAL_MANIFEST

PUBLISH_SCHEMES = ("s3", "gs", "file")
TOOLS = ("fsspec", "gsutil")


class PublishError(ClusterError):
    """The copy failed or does not match its source; the message names the files."""


@dataclass(frozen=True)
class Published:
    source: str  # the local modelUri, e.g. models:/wines-classifier@a
    name: str
    version: str
    uri: str  # where the model folder now is, e.g. s3://bucket/prefix/wines-classifier/3
    files: dict  # relative path -> sha256
    copied: bool  # False when the identical folder was already there


def check_destination(bucket: str) -> str:
    """A clear error unless ``bucket`` is s3://, gs:// or file://; returns its scheme."""
    if not isinstance(bucket, str) or "://" not in bucket:
        raise PublishError(
            f"{bucket!r} is not a bucket URI: expected s3://<bucket>/<prefix>, gs://... or file:///<folder>"
        )
    scheme = bucket.split("://", 1)[0]
    if scheme not in PUBLISH_SCHEMES:
        raise PublishError(
            f"{bucket}: cannot publish to {scheme}://; "
            f"use one of {', '.join(s + '://' for s in PUBLISH_SCHEMES)}"
        )
    if scheme == "file":
        if not bucket.startswith("file:///"):
            raise PublishError(f"{bucket}: a file:// destination must be absolute (file:///path)")
    else:
        try:
            split_bucket_uri(bucket)
        except ClusterError as e:
            raise PublishError(str(e)) from e
    return scheme


MAKE_BUCKET = {
    "s3": "aws s3 mb s3://{bucket} (MinIO: mc mb <alias>/{bucket})",
    "gs": "gcloud storage buckets create gs://{bucket}",
}


def check_bucket_exists(bucket: str, storage_options: Mapping | None = None) -> None:
    """Refuse a bucket that does not exist (or these credentials cannot see): publishing never creates one.

    Creating a bucket is a decision about region, access and cost that belongs to its owner
    (docs/cluster.md, step 2, shows the commands).
    """
    scheme = check_destination(bucket)
    if scheme == "file":
        return
    _, name, _ = split_bucket_uri(bucket)
    fs, _ = _filesystem(bucket, storage_options)
    try:
        exists = fs.exists(name)
    except (OSError, PermissionError) as e:
        raise PublishError(f"{bucket}: cannot reach the bucket {name!r} ({e})") from e
    if not exists:
        raise PublishError(
            f"{bucket}: bucket {name!r} does not exist or these credentials cannot see it; create it first: "
            + MAKE_BUCKET[scheme].format(bucket=name)
        )


def manifest_model_uris(manifest: str | os.PathLike = LOCAL_MANIFEST) -> list[str]:
    """The local ``modelUri`` of every model of a manifest, in order: each predictor's, or for a
    ROUTER graph (serving/model-bandit.yaml) each child's - the router node has no model."""
    from serving import deployment as sdep

    return [s.model_uri for s in sdep.load(manifest, local=False).servers if s.model_uri]


def resolve(model_uri: str):
    """``models:/name@alias`` or ``models:/name/version`` -> the registry's ModelVersion."""
    from training.tracking import ModelNotFound, registered_version

    try:
        return registered_version(model_uri)
    except ModelNotFound as e:
        raise PublishError(f"{e}; publish takes registered models - train the arms first") from e


def checksums(folder: str | os.PathLike) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under a local folder."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): _sha256(path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _filesystem(uri: str, storage_options: Mapping | None):
    import fsspec

    try:
        # a fresh filesystem each time: fsspec's instance cache keys on the arguments, not on the
        # environment, so a cached one would keep the endpoint and credentials of an earlier call
        return fsspec.core.url_to_fs(uri, skip_instance_cache=True, **dict(storage_options or {}))
    except ImportError as e:  # s3fs / gcsfs missing
        raise PublishError(f"{uri}: {e}; install the project's requirements.txt") from e


def remote_checksums(uri: str, storage_options: Mapping | None = None) -> dict[str, str]:
    """Relative path -> SHA-256 of every object under a bucket folder ({} when there is none)."""
    fs, root = _filesystem(uri, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache()  # s3fs/gcsfs cache listings: a copy made since must be seen
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return {}
    return {path[len(root) + 1 :]: _sha256(fs.cat_file(path)) for path in sorted(found) if path != root}


def _copy_fsspec(folder: Path, uri: str, storage_options: Mapping | None) -> None:
    fs, root = _filesystem(uri, storage_options)
    root = root.rstrip("/")
    local_fs = "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))
    for relative in checksums(folder):
        target = f"{root}/{relative}"
        if local_fs:
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(folder / relative), target)


def _copy_gsutil(folder: Path, uri: str) -> None:
    gsutil = shutil.which("gsutil")
    if gsutil is None:
        raise PublishError("tool='gsutil' but gsutil is not on PATH; use the default tool (gcsfs)")
    if uri.startswith("file://"):  # gsutil's rsync needs an existing destination folder
        Path(uri[len("file://") :]).mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [gsutil, "-q", "-m", "rsync", "-r", "-c", str(folder), uri],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise PublishError(
            f"gsutil rsync to {uri} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )


def publish_folder(
    folder: str | os.PathLike,
    uri: str,
    storage_options: Mapping | None = None,
    tool: str = "fsspec",
    overwrite: bool = False,
) -> tuple[dict[str, str], bool]:
    """Copy a local folder to ``uri`` and verify it byte for byte; return (checksums, copied)."""
    check_destination(uri)
    if tool not in TOOLS:
        raise PublishError(f"tool must be one of {TOOLS}, got {tool!r}")
    if tool == "gsutil" and not uri.startswith(("gs://", "file://")):
        raise PublishError(f"gsutil copies to gs:// (or file://), not to {uri}")
    folder = Path(folder)
    source = checksums(folder)
    if not source:
        raise PublishError(f"{folder}: nothing to publish (no files)")
    existing = remote_checksums(uri, storage_options)
    if existing == source:
        return source, False
    if existing and not overwrite:
        changed = sorted(k for k in set(source) | set(existing) if source.get(k) != existing.get(k))
        raise PublishError(
            f"{uri} already holds a different model ({', '.join(changed[:5])} differ); a published "
            f"version is immutable - publish a new version, or pass overwrite=True"
        )
    if tool == "gsutil":
        _copy_gsutil(folder, uri)
    else:
        _copy_fsspec(folder, uri, storage_options)
    verify(uri, source, storage_options)
    return source, True


def verify(uri: str, expected: Mapping[str, str], storage_options: Mapping | None = None) -> None:
    """Raise ``PublishError`` unless ``uri`` holds exactly the files ``expected`` (path -> sha256)."""
    found = remote_checksums(uri, storage_options)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or extra or changed:
        raise PublishError(
            f"{uri} does not match its source: missing {missing}, unexpected {extra}, different {changed}"
        )


def publish(
    bucket: str,
    model_uris: Iterable[str] | None = None,
    storage_options: Mapping | None = None,
    tool: str = "fsspec",
    overwrite: bool = False,
    manifest: str | os.PathLike = LOCAL_MANIFEST,
) -> dict[str, Published]:
    """Publish every arm of the manifest (or ``model_uris``) under ``bucket``; local modelUri -> Published.

    ``{uri: p.uri for uri, p in publish(...).items()}`` is what ``render.render_deployment`` takes.
    """
    import mlflow

    check_bucket_exists(bucket, storage_options)
    uris = list(model_uris) if model_uris is not None else manifest_model_uris(manifest)
    results = {}
    with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
        for model_uri in dict.fromkeys(uris):
            version = resolve(model_uri)
            local = Path(scratch) / f"{version.name}-{version.version}"
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(local)
            )
            target = join_uri(bucket, version.name, str(version.version))
            files, copied = publish_folder(local, target, storage_options, tool, overwrite)
            if "MLmodel" not in files:
                raise PublishError(
                    f"{model_uri}: the registered folder has no MLmodel file; is it an MLflow model?"
                )
            results[model_uri] = Published(
                model_uri, version.name, str(version.version), target, files, copied
            )
    return results
