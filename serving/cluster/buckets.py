"""Bucket URIs: where the models go for a cluster, and what Seldon's rclone storage initializer reads.

rclone reads ``s3://bucket/path`` with its remote named ``s3`` and ``gs://bucket/path`` with ``gs``
(the remote names the storage Secret must configure: ``serving.cluster.rclone``).
"""

from __future__ import annotations

import re

from serving.cluster import ClusterError

# bucket scheme -> the rclone remote (upper case, as in RCLONE_CONFIG_<REMOTE>_*) that reads it
BUCKET_SCHEMES = {"s3": "S3", "gs": "GS"}
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def split_bucket_uri(uri: str) -> tuple[str, str, str]:
    """``s3://bucket/some/path`` -> ``("s3", "bucket", "some/path")``; a clear error otherwise."""
    if not isinstance(uri, str) or "://" not in uri:
        raise ClusterError(
            f"{uri!r} is not a bucket URI: expected s3://<bucket>/<path> or gs://<bucket>/<path>"
        )
    scheme, rest = uri.split("://", 1)
    if scheme not in BUCKET_SCHEMES:
        raise ClusterError(
            f"{uri}: scheme {scheme!r} is not a bucket Seldon's storage initializer reads here; "
            f"use one of {', '.join(s + '://' for s in BUCKET_SCHEMES)}"
        )
    bucket, _, path = rest.partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise ClusterError(
            f"{uri}: {bucket!r} is not a valid bucket name (3-63 lower-case letters, digits, '.', '-', '_')"
        )
    path = path.rstrip("/")
    if path and any(part in ("", ".", "..") for part in path.split("/")):
        raise ClusterError(f"{uri}: the path must not contain empty, '.' or '..' parts")
    return scheme, bucket, path


def rclone_remote(uri: str) -> str:
    """The rclone remote (``S3``, ``GS``) that reads a bucket URI."""
    return BUCKET_SCHEMES[split_bucket_uri(uri)[0]]


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(str(p).strip("/") for p in parts)])
