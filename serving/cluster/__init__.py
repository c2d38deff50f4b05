"""The cluster path: the same SeldonDeployment on Kubernetes with Seldon Core v1.17.1.

    python -m serving.cluster --help

Modules (each importable from the notebook, each with a command in ``__main__``):

- ``render``      the cluster manifests, produced from ``serving/model-a-b.yaml`` (only ``modelUri``,
                  the namespace and, when a private bucket needs one, ``envSecretRefName`` change),
                  the rclone storage Secrets, the Seldon Core Helm values and the Istio Gateway;
- ``publish``     copy each registered arm's model folder to ``s3://`` or ``gs://`` (fsspec, or gsutil);
- ``server_image`` the model server image (``serving/cluster/image``) and its static checks;
- ``deploy``      create-or-replace the SeldonDeployment with the kubernetes client, wait until Available;
- ``analytics``   kube-prometheus-stack values, the PodMonitor, the dashboard ConfigMap, Grafana's Secret;
- ``endpoints``   the ingress and per-predictor URLs that ``feedback.py`` needs on a cluster.
"""
