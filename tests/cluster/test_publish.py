"""Publishing both trained arms to a bucket: file://, an S3 emulator on 127.0.0.1, gsutil.

The S3 bucket is served by moto's server mode (an S3 emulator - no real cloud bucket is reachable
here), started on a free loopback port for this module and stopped by its pid.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

from serving.cluster import publish as pub
from serving.cluster.publish import PublishError
from tests.cluster.helpers import s3_emulator

CREDENTIALS = {"key": "emulator-key", "secret": "emulator-secret"}


def registry_folder(version, into: Path) -> Path:
    """The registered model folder, fetched independently of the publish code."""
    return Path(
        mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}", dst_path=str(into))
    )


def read_back(uri: str, into: Path, storage_options=None) -> Path:
    """Copy a published folder back to local disk with fsspec (what rclone does in the pod)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.invalidate_cache()
    for path in fs.find(root):
        target = into / path[len(root.rstrip("/")) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(path))
    return into


def assert_byte_identical(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and "MLmodel" in files_a
    for name in files_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def round_trip(trained_arms, bucket, tmp_path, storage_options=None, tool="fsspec"):
    published = pub.publish(bucket, storage_options=storage_options, tool=tool)
    assert set(published) == {"models:/wines-classifier@a", "models:/wines-classifier@b"}
    for alias, version in trained_arms.items():
        p = published[f"models:/wines-classifier@{alias}"]
        assert p.uri == f"{bucket}/wines-classifier/{version.version}" and p.copied
        source = registry_folder(version, tmp_path / f"registry-{alias}")
        back = read_back(p.uri, tmp_path / f"back-{alias}", storage_options)
        assert_byte_identical(source, back)
        assert p.files == pub.checksums(source)
    return published


def test_publish_round_trips_both_arms_through_a_file_bucket_byte_identical(trained_arms, tmp_path):
    bucket = (tmp_path / "bucket").as_uri()
    published = round_trip(trained_arms, bucket, tmp_path)

    # publishing again is a no-op; a changed file in a published version is refused
    again = pub.publish(bucket)
    assert not any(p.copied for p in again.values())
    target = Path(published["models:/wines-classifier@a"].uri[len("file://") :]) / "MLmodel"
    target.write_text(target.read_text() + "\n# tampered\n")
    with pytest.raises(PublishError, match="already holds a different model .*MLmodel.*immutable"):
        pub.publish(bucket)
    assert pub.publish(bucket, overwrite=True)["models:/wines-classifier@a"].copied


def test_publish_round_trips_both_arms_through_the_s3_emulator_byte_identical(
    trained_arms, tmp_path, monkeypatch
):
    import s3fs

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a cloud metadata service
    with s3_emulator(tmp_path) as endpoint:
        options = {**CREDENTIALS, "endpoint_url": endpoint}
        # publishing never creates a bucket: docs/cluster.md's step 2 does, with the command named here
        with pytest.raises(PublishError, match="bucket 'mlflow-seldon-models' does not exist.*aws s3 mb"):
            pub.publish("s3://mlflow-seldon-models/tutorial", storage_options=options)
        s3fs.S3FileSystem(**options).mkdir("mlflow-seldon-models")
        published = round_trip(trained_arms, "s3://mlflow-seldon-models/tutorial", tmp_path, options)
        # the emulator really holds the objects
        fs = s3fs.S3FileSystem(**options)
        fs.invalidate_cache()
        keys = fs.find("mlflow-seldon-models/tutorial")
        assert sum(len(p.files) for p in published.values()) == len(keys)


@pytest.mark.skipif(
    shutil.which("gsutil") is None, reason="gsutil is not installed (publish uses gcsfs then)"
)
def test_publish_with_gsutil_round_trips_to_a_local_folder(trained_arms, tmp_path):
    round_trip(trained_arms, (tmp_path / "gs-bucket").as_uri(), tmp_path, tool="gsutil")


@pytest.mark.parametrize(
    "bucket, problem",
    [
        ("my-bucket/models", "not a bucket URI"),
        ("http://host/models", "cannot publish to http://"),
        ("file://relative/models", "must be absolute"),
        ("s3://UPPER/models", "not a valid bucket name"),
    ],
)
def test_publish_refuses_a_bad_destination_before_touching_the_registry(bucket, problem):
    with pytest.raises(PublishError, match=problem):
        pub.publish(bucket, model_uris=["models:/does-not-exist@a"])


def test_publish_names_an_arm_the_registry_does_not_have(trained_arms, tmp_path):
    with pytest.raises(PublishError, match="models:/wines-classifier@zz: not found in the MLflow registry"):
        pub.publish((tmp_path / "b").as_uri(), model_uris=["models:/wines-classifier@zz"])
    with pytest.raises(PublishError, match="publish takes registered models"):
        pub.publish((tmp_path / "b").as_uri(), model_uris=["runs:/abc/model"])


def test_gsutil_only_copies_to_gcs_or_local_folders(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "MLmodel").write_text("x")
    with pytest.raises(PublishError, match="gsutil copies to gs://"):
        pub.publish_folder(tmp_path / "f", "s3://bucket-1/x", tool="gsutil")
