"""The local Prometheus's configuration: what it scrapes and how often (fast, nothing started)."""

from __future__ import annotations

import json

import yaml

from serving import prometheus
from serving.local.supervisor import Plan


def test_the_scrape_interval_is_written_as_asked_and_defaults_to_two_seconds(tmp_path):
    default = prometheus.scrape_config("127.0.0.1:1", {"model-a": "127.0.0.1:2"})
    assert default["global"]["scrape_interval"] == f"{prometheus.SCRAPE_INTERVAL_SECONDS}s" == "2s"
    for interval, written in ((1, "1s"), (1.0, "1s"), (0.5, "0.5s")):
        path = prometheus.write_config(tmp_path / "p.yml", "127.0.0.1:1", {"a": "127.0.0.1:2"}, interval)
        config = yaml.safe_load(path.read_text())
        assert config["global"]["scrape_interval"] == written
        assert config["global"]["evaluation_interval"] == written
    targets = [t for job in default["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == ["127.0.0.1:1", "127.0.0.1:2"]


def test_a_plan_written_before_the_interval_existed_reads_with_the_default(tmp_path):
    fields = dict(
        manifest="m.yaml",
        source="m.yaml",
        manifest_sha256="0",
        ingress_port=1,
        requested_port=1,
        predictor_ports={},
        model_ports={},
        prometheus_port=2,
        tracking_uri="sqlite:///x.db",
    )
    Plan(**fields).write(tmp_path / "plan.json")
    old = json.loads((tmp_path / "plan.json").read_text())
    old.pop("scrape_interval")
    (tmp_path / "plan.json").write_text(json.dumps(old))
    assert Plan.read(tmp_path / "plan.json").scrape_interval == prometheus.SCRAPE_INTERVAL_SECONDS
    assert Plan(**fields, scrape_interval=1).scrape_interval == 1
