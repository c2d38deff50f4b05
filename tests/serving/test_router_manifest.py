"""serving/model-bandit.yaml: a ROUTER over both arms that the local stack and a cluster accept."""

from __future__ import annotations

import importlib

import pytest

from serving import deployment as sdep
from serving.gateway import ROUTING_INJECTION
from tests.conftest import REPO

BANDIT = REPO / "serving" / "model-bandit.yaml"


def test_it_loads_for_the_local_stack():
    deployment = sdep.load(BANDIT)
    (predictor,) = deployment.predictors
    assert predictor.traffic == 100
    assert [c.node for c in predictor.children] == ["model-a", "model-b"]
    assert all(c.implementation == "MLFLOW_SERVER" and c.model_uri for c in predictor.children)
    assert [s.name for s in deployment.servers] == [predictor.name, "model-a", "model-b"]


def test_it_matches_the_v1_17_1_crd(crd):
    sdep.load(BANDIT, crd=crd, local=False)


def test_routing_injection_is_on_and_the_router_parameters_name_the_children_in_order():
    (predictor,) = sdep.load(BANDIT).predictors
    assert predictor.orchestrator_env.get(ROUTING_INJECTION)
    params = {p["name"]: p["value"] for p in predictor.parameters}
    assert int(params["n_branches"]) == len(predictor.children)
    assert params["branch_names"].split(":") == [c.node for c in predictor.children]
    # the class its command names exists and accepts these parameters
    path = next(arg for arg in predictor.command if arg.startswith(sdep.ROUTER_CLASSES))
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    router = cls(n_branches=int(params["n_branches"]), branch_names=params["branch_names"], seed=1)
    assert router.branch_names == [c.node for c in predictor.children]
    assert predictor.env.get("GUNICORN_WORKERS") == "1"  # the router's state is one process's


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda g: g.update(type="MODEL"), "type: ROUTER"),
        (
            lambda g: g["children"][0].update(children=[{"name": "deeper", "type": "MODEL"}]),
            "without children",
        ),
        (lambda g: g["children"][1].update(name="model-a"), "more than once"),
    ],
)
def test_graphs_the_local_stack_cannot_serve_are_refused_by_name(change, says):
    import yaml

    manifest = yaml.safe_load(BANDIT.read_text())
    change(manifest["spec"]["predictors"][0]["graph"])
    with pytest.raises(sdep.DeploymentError, match=says):
        sdep.parse(manifest)


def test_a_router_that_is_not_one_of_the_projects_is_refused_locally():
    import yaml

    manifest = yaml.safe_load(BANDIT.read_text())
    for c in manifest["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"]:
        if c["name"] == "router":
            c["command"] = ["python", "-m", "serving.microservice", "MyRouter"]
    with pytest.raises(sdep.DeploymentError, match="project's routers"):
        sdep.parse(manifest)
    sdep.parse(manifest, local=False)  # a cluster runs whatever image it is given
