"""The notebook's cluster steps, one call each, in the order a cluster needs them.

    cluster = ClusterTarget(namespace="seldon", bucket="s3://my-bucket/mlflow-seldon", storage="s3",
                            ingress="127.0.0.1:8080", prometheus="http://127.0.0.1:9090")
    cluster.publish("serving/model-a-b.yaml")   # each arm's model folder to the bucket, checksummed
    cluster.prepare()                           # the namespace, and the storage Secret in it
    cluster.deploy("runs/model-a-b.yaml")       # render for the cluster, create or replace, wait
    endpoints = cluster.connect()               # port-forward each arm's Service; Endpoints
    ...                                         # replay with endpoints; Prometheus at cluster.prometheus
    cluster.deploy("runs/model-a-b.yaml")       # after promotion edited the working copy: re-apply
    cluster.close()                             # stop the port-forwards, delete the SeldonDeployment

The reader's machine reaches the cluster's ingress and Prometheus through addresses they give
(a load balancer, or ``kubectl port-forward`` they run: docs/cluster.md); the arms' own Services
have no load balancer, so ``connect`` forwards them itself and waits until each answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serving.cluster import ClusterError, analytics, deploy, publish, rclone, render
from serving.cluster.buckets import split_bucket_uri
from serving.cluster.endpoints import PortForwards, cluster_endpoints, port_forwards
from serving.endpoints import Endpoints

RENDERED = "model-a-b.cluster.yaml"


@dataclass
class ClusterTarget:
    """``storage``: the rclone Secret template (``s3``, ``s3-iam``, ``minio``, ``gcs``), filled from
    the environment; ``None`` only for a public ``gs://`` bucket. ``scrape_interval``: seconds
    between Prometheus's scrapes of the pods, by default the PodMonitor's. ``image``: the project's
    model server image, needed to deploy a ROUTER graph (serving/model-bandit.yaml)."""

    namespace: str
    bucket: str
    ingress: str
    prometheus: str
    storage: str | None = "s3"
    image: str | None = None  # the project's model server image: a ROUTER graph's router runs it
    secret_name: str = rclone.DEFAULT_SECRET_NAME
    work_dir: str | os.PathLike = "runs"
    scrape_interval: float | None = None
    timeout: float = 900
    kubectl: str = "kubectl"
    published: dict = field(default_factory=dict)
    forwards: PortForwards | None = None
    deployed: str | None = None

    def __post_init__(self):
        split_bucket_uri(self.bucket)
        if self.storage is not None and self.storage not in rclone.TEMPLATES:
            raise ClusterError(
                f"storage must be one of {sorted(rclone.TEMPLATES)} or None, got {self.storage!r}"
            )
        if self.storage is None:
            rclone.check_without_secret(self.bucket)
        self.scrape_interval = self.scrape_interval or analytics.scrape_interval()
        self.work_dir = Path(self.work_dir)

    @property
    def manifest_path(self) -> Path:
        """The rendered SeldonDeployment (what ``kubectl apply -f`` would take)."""
        return Path(self.work_dir) / RENDERED

    @property
    def env_secret(self) -> str | None:
        return self.secret_name if self.storage else None

    def publish(self, manifest: str | os.PathLike, **options) -> dict[str, publish.Published]:
        """Copy each arm's registered model folder to the bucket (``serving.cluster.publish``)."""
        self.published = publish.publish(self.bucket, manifest=manifest, **options)
        return self.published

    def prepare(self, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
        """Create the namespace unless it exists, and create or replace the storage Secret in it."""
        done = {"namespace": "created" if deploy.ensure_namespace(self.namespace) else "exists"}
        if self.storage:
            secret = rclone.rclone_secret(
                self.storage, environ, name=self.secret_name, namespace=self.namespace, model_uri=self.bucket
            )
            done[f"Secret {self.secret_name}"] = deploy.apply_secret(secret)
        return done

    def deploy(self, manifest: str | os.PathLike, timeout: float | None = None) -> dict:
        """Render ``manifest`` (the working copy) for the cluster, create or replace it, wait until Available.

        The one render call: the first deploy and the re-apply after a promotion both come here.
        """
        if not self.published:
            raise ClusterError("nothing published yet: call publish(...) first")
        rendered = render.write_deployment(
            self.manifest_path,
            self.published,
            self.namespace,
            env_secret=self.env_secret,
            source=manifest,
            image=self.image,
        )
        status = deploy.deploy(rendered, timeout=timeout or self.timeout)
        self.deployed = render.load_plain(rendered)["metadata"]["name"]
        return status

    def connect(self, timeout: float = 60) -> Endpoints:
        """Port-forward each arm's Service to a free local port, wait until each answers; the Endpoints."""
        from serving.local import free_ports

        self.stop_forwards()
        names = list(port_forwards(self.manifest_path))
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.forwards = PortForwards(port_forwards(self.manifest_path, ports), self.kubectl, timeout).start()
        return cluster_endpoints(self.manifest_path, self.ingress, local_ports=ports)

    def stop_forwards(self) -> None:
        if self.forwards is not None:
            self.forwards.stop()
            self.forwards = None

    def close(self, delete: bool = True) -> bool:
        """Stop the port-forwards; delete the SeldonDeployment (the bucket keeps the models)."""
        self.stop_forwards()
        if delete and self.deployed:
            return deploy.delete(self.deployed, self.namespace)
        return False
