"""The cluster path: the same SeldonDeployment on Kubernetes with Seldon Core v1.17.1.

    python -m serving.cluster --help

Modules, one idea each (each importable from the notebook, each with a command in ``__main__``):

- ``buckets``      bucket URIs (``s3://``, ``gs://``): parse, check, join;
- ``publish``      copy each registered arm's model folder to a bucket (fsspec, or gsutil);
- ``render``       the cluster SeldonDeployment, produced from ``serving/model-a-b.yaml`` (only
                   ``modelUri``, the namespace and ``envSecretRefName`` change);
- ``rclone``       the storage Secrets Seldon's rclone init container reads, from templates;
- ``helm``         the Seldon Core Helm values (our image as ``MLFLOW_SERVER``) and the Istio Gateway;
- ``server_image`` the model server image (``serving/cluster/image``) and its static checks;
- ``deploy``       namespace, Secret, create-or-replace the SeldonDeployment, wait until Available;
- ``analytics``    kube-prometheus-stack values, the PodMonitor and its scrape interval, the dashboard;
- ``endpoints``    the ingress and per-predictor addresses (``serving.endpoints.Endpoints``) and the
                   ``kubectl port-forward``s that reach them from a laptop;
- ``target``       the notebook's cluster steps, one call each (publish, deploy, connect, clean up);
- ``smoke``        a one-command check of an install: predict, feedback to one arm, the counter.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = Path(__file__).resolve().parent / "manifests"


class ClusterError(ValueError):
    """A cluster manifest or setting that would fail on the cluster; the message names it."""
