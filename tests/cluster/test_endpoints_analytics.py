"""Cluster feedback URLs, and the analytics manifests (PodMonitor, Helm values, dashboard, Secret)."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from serving.cluster import ClusterError, analytics, render
from serving.cluster.endpoints import cluster_endpoints, feedback_args, port_forwards, predictor_service
from serving.endpoints import Endpoints
from tests.cluster.helpers import k8s_unknown_fields
from tests.cluster.test_render import SECRET, URIS


@pytest.fixture
def rendered():
    return render.plain(render.render_deployment(URIS, "seldon", env_secret=SECRET))


def test_port_forward_endpoints_for_feedback_and_the_ingress_for_predictions(rendered):
    e = cluster_endpoints(rendered, "127.0.0.1:8080")

    assert type(e) is Endpoints  # the project's one endpoints type, what feedback.py takes
    assert e.predictions_url == "http://127.0.0.1:8080/seldon/seldon/wines-classifier/api/v1.0/predictions"
    assert e.ingress_feedback_url == "http://127.0.0.1:8080/seldon/seldon/wines-classifier/api/v1.0/feedback"
    assert e.predictors == {"model-a": "127.0.0.1:9001", "model-b": "127.0.0.1:9002"}
    assert e.feedback_url("model-b") == "http://127.0.0.1:9002/api/v1.0/feedback"
    assert [f.command for f in port_forwards(rendered).values()] == [
        "kubectl port-forward -n seldon svc/wines-classifier-model-a 9001:8000",
        "kubectl port-forward -n seldon svc/wines-classifier-model-b 9002:8000",
    ]
    assert e.nodes == {"model-a": "model-a", "model-b": "model-b"}
    assert feedback_args(e) == [
        "--ingress",
        "127.0.0.1:8080",
        "--namespace",
        "seldon",
        "--deployment",
        "wines-classifier",
        "--predictor",
        "model-a=127.0.0.1:9001",
        "--predictor",
        "model-b=127.0.0.1:9002",
        "--node",
        "model-a=model-a",
        "--node",
        "model-b=model-b",
    ]


def test_in_cluster_endpoints_use_the_predictor_services_dns_names(rendered):
    e = cluster_endpoints(
        rendered, "http://istio-ingressgateway.istio-system.svc.cluster.local", via="cluster-dns"
    )
    assert e.predictions_url == (
        "http://istio-ingressgateway.istio-system.svc.cluster.local/seldon/seldon/wines-classifier/api/v1.0/predictions"
    )
    assert (
        e.feedback_url("model-a")
        == "http://wines-classifier-model-a.seldon.svc.cluster.local:8000/api/v1.0/feedback"
    )
    assert e.predictors["model-b"] == "wines-classifier-model-b.seldon.svc.cluster.local:8000"


def test_an_https_ingress_keeps_the_port_forwards_on_plain_http(rendered):
    e = cluster_endpoints(rendered, "https://lb.example.com")
    assert e.predictions_url.startswith("https://lb.example.com/seldon/")
    assert e.feedback_url("model-a") == "http://127.0.0.1:9001/api/v1.0/feedback"
    assert feedback_args(e)[:2] == ["--ingress", "lb.example.com"]


def test_chosen_local_ports_and_their_mistakes(rendered):
    e = cluster_endpoints(rendered, "lb.example.com", local_ports={"model-a": 19000, "model-b": 19001})
    assert e.predictor_url("model-b") == "http://127.0.0.1:19001"
    assert e.ingress_url == "http://lb.example.com"
    with pytest.raises(ClusterError, match="own local port"):
        cluster_endpoints(rendered, "lb", local_ports={"model-a": 19000, "model-b": 19000})
    with pytest.raises(ClusterError, match="not predictors"):
        cluster_endpoints(rendered, "lb", local_ports={"model-c": 19000})
    with pytest.raises(ClusterError, match="1024-65535"):
        cluster_endpoints(rendered, "lb", local_ports={"model-a": 80})


@pytest.mark.parametrize(
    "ingress, problem",
    [("", "empty"), ("ftp://x", "not an http"), ("h:1/seldon", "without a path"), ("h:99999", "Port")],
)
def test_a_bad_ingress_address_is_named(rendered, ingress, problem):
    with pytest.raises(ClusterError, match=problem):
        cluster_endpoints(rendered, ingress)


def test_predictor_service_names_follow_the_operator():
    assert predictor_service("wines-classifier", "model-a") == "wines-classifier-model-a"
    assert predictor_service("w", "a", {"seldon.io/svc-name": "custom"}) == "custom"
    long_name = "d" * 40 + "-" + "p" * 30
    assert predictor_service("d" * 40, "p" * 30) == "seldon-" + hashlib.md5(long_name.encode()).hexdigest()


def test_the_manifest_file_works_as_well_as_the_document(tmp_path, rendered):
    path = tmp_path / "sdep.yaml"
    path.write_text(yaml.safe_dump(rendered))
    assert cluster_endpoints(path, "127.0.0.1:8080") == cluster_endpoints(rendered, "127.0.0.1:8080")


# ------------------------------------------------------------------------------- analytics
def test_the_cluster_scrape_interval_is_the_podmonitors_and_the_windows_cover_it():
    from experiment import rate_window

    interval = analytics.scrape_interval()
    assert interval == 15  # manifests/podmonitor.yaml and the Helm values' scrapeInterval
    window = float(rate_window(interval).rstrip("s"))
    assert window >= 4 * interval  # a rate() needs two samples in its window, with room for a late one
    # the local stack's window (2 s scrapes) would hold at most one cluster sample: every rate() empty
    assert float(rate_window().rstrip("s")) < interval
    with pytest.raises(ClusterError, match="several intervals"):
        analytics.scrape_interval(
            {"spec": {"podMetricsEndpoints": [{"interval": "15s"}, {"interval": "30s"}]}}
        )
    assert analytics.scrape_interval({"spec": {"podMetricsEndpoints": [{"interval": "1m"}]}}) == 60


def test_the_podmonitor_scrapes_the_pods_seldon_manages_on_their_metrics_ports():
    monitor = analytics.podmonitor()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    # the operator's labels.go puts this label on every predictor pod
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "seldon-core"}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    # executor port 8000 and model port 6000 are both named `metrics`, both serve /prometheus
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/prometheus", "interval": "15s"}
    ]


def test_the_helm_values_pick_up_our_podmonitor_secret_and_dashboards():
    values = analytics.values()
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False
    assert spec["scrapeInterval"] == analytics.podmonitor()["spec"]["podMetricsEndpoints"][0]["interval"]
    secret = analytics.grafana_admin_secret()
    assert values["grafana"]["admin"]["existingSecret"] == secret["metadata"]["name"]
    assert set(secret["stringData"]) == {
        values["grafana"]["admin"]["userKey"],
        values["grafana"]["admin"]["passwordKey"],
    }
    configmap = analytics.dashboard_configmap()
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    assert (
        configmap["metadata"]["labels"]
        == {sidecar["label"]: sidecar["labelValue"]}
        == {"grafana_dashboard": "1"}
    )


def test_the_dashboard_configmap_is_generated_from_the_dashboard_file():
    configmap = analytics.dashboard_configmap(namespace="monitoring")
    assert k8s_unknown_fields(configmap) == []
    ((name, text),) = configmap["data"].items()
    assert name == analytics.DASHBOARD.name
    assert text == analytics.DASHBOARD.read_text()  # the file itself, not a copy kept elsewhere
    assert yaml.safe_load(render.dump(configmap)) == configmap


def test_a_file_that_is_no_dashboard_is_refused(tmp_path):
    bad = tmp_path / "board.json"
    bad.write_text("{not json")
    with pytest.raises(ClusterError, match="not valid JSON"):
        analytics.dashboard_configmap(bad)
    bad.write_text(json.dumps({"title": "x"}))
    with pytest.raises(ClusterError, match="not a Grafana dashboard"):
        analytics.dashboard_configmap(bad)
    with pytest.raises(ClusterError, match="cannot read"):
        analytics.dashboard_configmap(tmp_path / "missing.json")


def test_grafanas_admin_password_is_generated_never_a_default():
    first, second = analytics.grafana_admin_secret(), analytics.grafana_admin_secret()
    assert k8s_unknown_fields(first) == []
    password = first["stringData"]["admin-password"]
    assert len(password) >= 24 and password != second["stringData"]["admin-password"]
    for weak in ("admin", "password", "prom-operator", "short"):
        with pytest.raises(ClusterError, match="at least 16 characters and not a default"):
            analytics.grafana_admin_secret(password=weak)


def test_the_kubernetes_field_check_catches_a_misplaced_field():
    # the check used on Secrets and ConfigMaps above can fail: a typo'd field is reported
    secret = analytics.grafana_admin_secret()
    secret["stringdata"] = secret.pop("stringData")
    assert k8s_unknown_fields(secret) == ["stringdata"]


# ------------------------------------------------------------------------------ port-forwards
def test_a_port_forward_that_fails_says_what_kubectl_said(tmp_path, monkeypatch):
    from serving.cluster.endpoints import Forward, PortForwardError, PortForwards
    from serving.local import free_port
    from tests.cluster.standin import StandInCluster

    with StandInCluster(tmp_path / "cluster") as cluster:  # no SeldonDeployment: no Services
        for name, value in cluster.env.items():
            monkeypatch.setenv(name, value)
        forwards = PortForwards(
            {"model-a": Forward("seldon", "wines-classifier-model-a", free_port())}, timeout=20
        )
        with pytest.raises(
            PortForwardError, match='exited with 1: .*services "wines-classifier-model-a" not found'
        ):
            forwards.start()
        assert forwards.processes == {}  # stopped and forgotten


def test_a_missing_kubectl_is_named_with_the_command_to_run(rendered):
    from serving.cluster.endpoints import PortForwardError, PortForwards

    forwards = PortForwards(port_forwards(rendered), kubectl="no-such-kubectl-here")
    with pytest.raises(PortForwardError, match="no-such-kubectl-here is not on PATH.*port-forward -n seldon"):
        forwards.start()
