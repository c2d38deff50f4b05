"""The cluster path run end to end against the STAND-IN cluster (tests/cluster/standin.py).

It is not Kubernetes: these tests prove the order, the parameters and the glue of the cluster
path - the notebook's cluster branch and the smoke command - not what Seldon's operator, rclone,
Istio or the image do on a real cluster (docs/cluster.md's checklist).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time

import nbformat
import pytest

from serving.cluster import deploy
from serving.cluster.target import ClusterTarget
from serving.local import free_port
from tests.cluster.helpers import s3_emulator
from tests.cluster.standin import StandInCluster
from tests.conftest import MANIFEST, REPO

BUCKET = "s3://standin-models/mlflow-seldon"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "standin-key",
    "AWS_SECRET_ACCESS_KEY": "standin-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service
}

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def _bucket_env(s3_endpoint: str) -> dict[str, str]:
    """The reader's environment for MinIO: publish from this machine (AWS_ENDPOINT_URL) and the
    Secret's in-cluster endpoint (S3_ENDPOINT_URL) - the same loopback emulator here."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint, "S3_ENDPOINT_URL": s3_endpoint}


def _make_bucket(s3_endpoint: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(
        key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=s3_endpoint,
    )
    fs.mkdir(BUCKET[len("s3://") :].split("/")[0])  # docs/cluster.md step 2: `aws s3 mb` / `mc mb`


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_stand_in_cluster_deploy_smoke_and_delete(trained_arms, tmp_path, monkeypatch):
    with s3_emulator(tmp_path) as s3, StandInCluster(tmp_path / "cluster") as cluster:
        _make_bucket(s3)
        for name, value in {**_bucket_env(s3), **cluster.env}.items():
            monkeypatch.setenv(name, value)
        target = ClusterTarget(
            namespace="seldon",
            bucket=BUCKET,
            storage="minio",
            ingress=cluster.ingress,
            prometheus=cluster.prometheus_url,
            work_dir=tmp_path / "runs",
            timeout=300,
        )
        assert target.scrape_interval == cluster.scrape_interval == 15  # the PodMonitor's
        published = target.publish(MANIFEST)

        # the namespace does not exist yet: the deploy helper says so, and not "install Seldon Core"
        with pytest.raises(deploy.DeployError, match="namespace 'seldon' does not exist"):
            target.deploy(MANIFEST, timeout=30)
        assert target.prepare() == {"namespace": "created", "Secret seldon-rclone-secret": "created"}
        status = target.deploy(MANIFEST)
        assert status["state"] == "Available"
        assert cluster.events == ["serving seldon/wines-classifier: {'model-a': 50, 'model-b': 50}"]
        # what the stand-in's storage initializer copied is what publish put in the bucket
        copied = sorted(p.name for p in (tmp_path / "cluster" / "mnt").iterdir())
        assert copied == ["seldon-wines-classifier-model-a", "seldon-wines-classifier-model-b"]
        assert all(p.uri.startswith(BUCKET) for p in published.values())

        # the one-command smoke test a reader runs, as a reader runs it (port-forwards through kubectl)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "serving.cluster",
                "smoke",
                str(target.manifest_path),
                "--ingress",
                cluster.ingress,
                "--prometheus",
                cluster.prometheus_url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env=os.environ,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"OK: predicted \S+ through the ingress, answered by model-[ab]", result.stdout)
        assert re.search(r"seldon_api_model_feedback_total \d+ -> \d+", result.stdout)

        endpoints = target.connect()
        forwards = list(target.forwards.processes.values())
        assert endpoints.predictions_url == (
            f"http://{cluster.ingress}/seldon/seldon/wines-classifier/api/v1.0/predictions"
        )
        assert target.close() is True
        assert all(p.poll() is not None for p in forwards)  # the port-forwards are stopped
        _wait_for(
            lambda: any(e.startswith("deleted") for e in cluster.events), 60, "the stand-in to tear down"
        )
        assert not cluster.stack.running()


def test_stand_in_cluster_fails_an_s3_deployment_whose_secret_is_missing(trained_arms, tmp_path, monkeypatch):
    # what the init container does without the Secret: the state becomes Failed, and deploy says so
    with s3_emulator(tmp_path) as s3, StandInCluster(tmp_path / "cluster") as cluster:
        _make_bucket(s3)
        for name, value in {**_bucket_env(s3), **cluster.env}.items():
            monkeypatch.setenv(name, value)
        target = ClusterTarget("seldon", BUCKET, cluster.ingress, cluster.prometheus_url, storage="minio")
        target.work_dir = tmp_path / "runs"
        target.publish(MANIFEST)
        deploy.ensure_namespace("seldon")  # the namespace, but no Secret in it
        with pytest.raises(deploy.DeployError, match="secret 'seldon-rclone-secret' not found"):
            target.deploy(MANIFEST, timeout=60)
        assert not cluster.stack.running()


@pytest.mark.notebook
def test_notebook_cluster_branch_runs_top_to_bottom_against_the_stand_in_cluster(tmp_path):
    """The notebook with TARGET="cluster", a fresh kernel and tracking store, against the stand-in."""
    output = tmp_path / "executed.ipynb"
    with s3_emulator(tmp_path) as s3, StandInCluster(tmp_path / "cluster") as cluster:
        _make_bucket(s3)
        parameters = {
            "TARGET": "cluster",
            "BUCKET": BUCKET,
            "NAMESPACE": "seldon",
            "STORAGE": "minio",
            "INGRESS": cluster.ingress,
            "PROMETHEUS": cluster.prometheus_url,
            "PORT": 0,
            "STATE_DIR": str(tmp_path / "stack"),
            "WORK_DIR": str(tmp_path / "runs"),
            "IMAGES": str(tmp_path / "images"),
            # a replay that spans several 15 s scrapes: at the default 150 rows/s it lasts ~13 s, and
            # experiment.figure_frames then ends its range at the first scrape after the replay, where
            # a reward series born during the replay has fewer than two samples ("Prometheus returned
            # no data for ['reward']") - found by this stand-in, reported to the analysis' owner
            "REPLAY_RATE": 40,
            # the shadow step: the stand-in's "pods" run on this machine, so a sink on a free loopback
            # port is one they reach; the stand-in's stack starts it and it writes under its state folder
            "LOGGER_URL": f"http://127.0.0.1:{free_port()}/",
            "REQUEST_LOGS": str(tmp_path / "cluster" / "operator" / "stack" / "request-logs"),
        }
        env = {
            **os.environ,
            **_bucket_env(s3),
            **cluster.env,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "run_notebook.py"),
                "--output",
                str(output),
                *[arg for name, value in parameters.items() for arg in ("-p", name, repr(value))],
            ],
            capture_output=True,
            text=True,
            timeout=1500,
            cwd=REPO,
            env=env,
        )
        events = list(cluster.events)
        calls = [c[0] for c in cluster.api.calls]
        assert result.returncode == 0, f"stand-in events: {events}\n{result.stderr[-4000:]}"
        _wait_for(
            lambda: any(e.startswith("deleted") for e in cluster.events), 60, "the stand-in to tear down"
        )
        assert not cluster.stack.running(), "the notebook's clean-up did not delete the SeldonDeployment"
    executed = nbformat.read(output, as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "Verdict" in outputs

    # the branch's order: namespace and Secret before the deployment, the deployment before traffic
    assert calls.index("create_namespace") < calls.index("create_secret") < calls.index("create")
    # the shadow deployment first, then the same SeldonDeployment re-applied as the A/B test
    assert events[0] == "serving seldon/wines-classifier: {'model-b': 100, 'model-a': 0}"
    assert events[1] == "serving seldon/wines-classifier: {'model-a': 50, 'model-b': 50}"
    assert "paired requests" in outputs  # the shadow's answers, read from the stand-in's sink, paired
    # the promotion, re-applied to the cluster BEFORE "requests after promotion" measured it
    promoted = [e for e in events if e.startswith("traffic of seldon/wines-classifier")]
    served_after = re.search(r"requests after promotion, served by: (\{[^}]*\})", outputs)
    if "promoted" in outputs and served_after:
        assert promoted and re.search(r"\{'model-[ab]': 100, 'model-[ab]': 0\}", promoted[-1])
        assert len(ast.literal_eval(served_after.group(1).replace("\\'", "'"))) == 1  # one arm served
    # the dashboard figures, from the stand-in's Prometheus at the PodMonitor's scrape interval
    assert len(list((tmp_path / "images").glob("*.png"))) >= 3
    assert outputs.count("image/png") >= 3
