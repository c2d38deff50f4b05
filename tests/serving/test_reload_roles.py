"""A reload that would turn a shadow into a live arm (or back) is refused: the stack must restart.

The local supervisor runs a shadow's model server niced, and an unprivileged process cannot raise
its priority again; applied in place, the former shadow would answer callers at the lower priority
(measured: 3-6x slower than its rival under concurrent load, every latency guardrail breached).
A real gateway object reads real manifests here; nothing is started (fast).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ruamel.yaml import YAML

from serving.gateway import Gateway, GatewayConfig
from serving.local import free_port

AB = Path(__file__).resolve().parents[2] / "serving" / "model-a-b.yaml"


def write(path: Path, shadow: str | None, traffic: dict[str, int]) -> None:
    yaml = YAML()
    manifest = yaml.load(AB.read_text())
    for predictor in manifest["spec"]["predictors"]:
        predictor["traffic"] = traffic[predictor["name"]]
        if predictor["name"] == shadow:
            predictor["shadow"] = True
        else:
            predictor.pop("shadow", None)
    with open(path, "w") as f:
        yaml.dump(manifest, f)


def gateway(path: Path) -> Gateway:
    upstreams = {name: f"http://127.0.0.1:{free_port()}" for name in ("model-a", "model-b")}
    ports = {name: free_port() for name in upstreams}
    return Gateway(
        GatewayConfig(
            manifest=str(path), upstreams=upstreams, predictor_ports=ports, ingress_port=free_port()
        )
    )


def test_a_shadow_made_a_live_arm_in_place_is_refused_and_the_split_kept(tmp_path):
    path = tmp_path / "manifest.yaml"
    write(path, shadow="model-a", traffic={"model-a": 0, "model-b": 100})
    gw = gateway(path)
    assert gw.routes.shadow.name == "model-a"
    write(path, shadow=None, traffic={"model-a": 50, "model-b": 50})
    result = asyncio.run(gw.reload())
    assert not result["applied"]
    assert "model-a" in result["error"] and "--replace" in result["error"]
    assert gw.routes.names == ["model-b"] and gw.routes.shadow.name == "model-a"  # still serving the old


def test_a_live_arm_made_a_shadow_in_place_is_refused(tmp_path):
    path = tmp_path / "manifest.yaml"
    write(path, shadow=None, traffic={"model-a": 50, "model-b": 50})
    gw = gateway(path)
    write(path, shadow="model-a", traffic={"model-a": 0, "model-b": 100})
    result = asyncio.run(gw.reload())
    assert not result["applied"] and "shadow" in result["error"]
    assert sorted(gw.routes.names) == ["model-a", "model-b"]


def test_a_traffic_change_with_the_same_roles_applies(tmp_path):
    path = tmp_path / "manifest.yaml"
    write(path, shadow=None, traffic={"model-a": 50, "model-b": 50})
    gw = gateway(path)
    write(path, shadow=None, traffic={"model-a": 100, "model-b": 0})
    result = asyncio.run(gw.reload())
    assert result["applied"], result
    assert gw.routes.names == ["model-a"]
