"""Cluster analytics: Prometheus and Grafana from kube-prometheus-stack, fed by Seldon's metrics.

- ``manifests/kube-prometheus-stack-values.yaml``: Helm values (PodMonitors from any release,
  15 s scrapes, Grafana's admin from our Secret, the dashboard sidecar on label grafana_dashboard);
- ``manifests/podmonitor.yaml``: scrape the executor (port 8000) and the model containers (the
  operator gives the first model container metrics port 6000, the next 6001, ...), all named
  ``metrics`` and serving ``/prometheus`` in Seldon Core v1.17.1's pods; ``scrape_interval()`` is
  its interval, which every ``rate()`` window on a cluster must cover (4x);
- ``dashboard_configmap``: the project's dashboard (``serving/grafana/ab-test.json``) as a
  ConfigMap with the sidecar's label, generated from that file - never a copy of it;
- ``grafana_admin_secret``: a Secret with a freshly generated admin password.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import yaml

from serving.cluster import MANIFESTS, REPO, ClusterError

DASHBOARD = REPO / "serving" / "grafana" / "ab-test.json"
VALUES = MANIFESTS / "kube-prometheus-stack-values.yaml"
PODMONITOR = MANIFESTS / "podmonitor.yaml"
MONITORING_NAMESPACE = "monitoring"
HELM_RELEASE = "monitoring"
CONFIGMAP_LIMIT = 1024 * 1024  # the API server's limit on a ConfigMap's data
WEAK_PASSWORDS = {"admin", "password", "prom-operator", "changeme", "grafana"}


def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def podmonitor() -> dict:
    return yaml.safe_load(PODMONITOR.read_text())


def scrape_interval(monitor: dict | None = None) -> float:
    """Seconds between two scrapes of Seldon's pods on the cluster: the PodMonitor's interval.

    Every endpoint of the PodMonitor must say it (a missing one falls back to the Prometheus
    default, which the values set too); a ``rate()`` window shorter than 2 scrapes is empty.
    """
    monitor = monitor or podmonitor()
    default = values()["prometheus"]["prometheusSpec"]["scrapeInterval"]
    intervals = {_seconds(e.get("interval") or default) for e in monitor["spec"]["podMetricsEndpoints"]}
    if len(intervals) != 1:
        raise ClusterError(f"the PodMonitor scrapes at several intervals {sorted(intervals)}; use one")
    return intervals.pop()


def _seconds(duration: str) -> float:
    """A Prometheus duration of seconds or minutes (``15s``, ``1m``) in seconds."""
    units = {"s": 1, "m": 60}
    text = str(duration).strip()
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise ClusterError(f"{duration!r} is not a scrape interval like 15s or 1m")
    return float(text[:-1]) * units[text[-1]]


def dashboard_configmap(
    dashboard: str | os.PathLike = DASHBOARD, namespace: str = MONITORING_NAMESPACE, name: str | None = None
) -> dict:
    """A ConfigMap carrying the dashboard JSON, labelled for kube-prometheus-stack's Grafana sidecar."""
    path = Path(dashboard)
    try:
        text = path.read_text()
    except OSError as e:
        raise ClusterError(f"{path}: cannot read the dashboard ({e.strerror})") from e
    try:
        board = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(board, dict) or not isinstance(board.get("panels"), list) or not board.get("title"):
        raise ClusterError(f"{path}: not a Grafana dashboard (needs a title and a list of panels)")
    if len(text.encode()) >= CONFIGMAP_LIMIT:
        raise ClusterError(f"{path}: {len(text.encode())} bytes, over a ConfigMap's 1 MiB")
    sidecar = values()["grafana"]["sidecar"]["dashboards"]
    uid = str(board.get("uid") or path.stem)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name or f"grafana-dashboard-{_dns(uid)}",
            "namespace": namespace,
            "labels": {sidecar["label"]: str(sidecar["labelValue"])},
        },
        "data": {path.name: text},
    }


def _dns(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return out[:40].strip("-") or "dashboard"


def generate_password(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


def grafana_admin_secret(
    namespace: str = MONITORING_NAMESPACE, password: str | None = None, user: str = "admin"
) -> dict:
    """The Secret the Helm values name in ``grafana.admin.existingSecret``, with a generated password.

    A password you pass must be at least 16 characters and not a well-known default.
    """
    admin = values()["grafana"]["admin"]
    if password is None:
        password = generate_password()
    if password.lower() in WEAK_PASSWORDS or len(password) < 16:
        raise ClusterError(
            "the Grafana admin password must be at least 16 characters and not a default; "
            "omit it to generate one"
        )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": admin["existingSecret"], "namespace": namespace},
        "type": "Opaque",
        "stringData": {admin["userKey"]: user, admin["passwordKey"]: password},
    }
