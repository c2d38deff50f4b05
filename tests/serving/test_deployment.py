"""Checking a SeldonDeployment before anything starts: every mistake gets an error naming it."""

import copy
import subprocess
import sys

import pytest
import yaml

from serving import deployment as sdep
from serving.manifest import set_traffic
from tests.conftest import MANIFEST

GOOD = yaml.safe_load(MANIFEST.read_text())


def edited(change) -> dict:
    manifest = copy.deepcopy(GOOD)
    change(manifest)
    return manifest


def predictors(m):
    return m["spec"]["predictors"]


def test_the_committed_manifest_is_valid():
    # the project's schema; tests/serving/test_schema.py holds it side by side with the CRD
    assert sdep.validate_schema(GOOD) == []
    deployment = sdep.parse(GOOD)
    assert deployment.name == "wines-classifier" and deployment.namespace == "default"
    assert deployment.traffic == {"model-a": 50, "model-b": 50}
    assert [p.node for p in deployment.predictors] == ["model-a", "model-b"]
    assert [p.model_uri for p in deployment.predictors] == [
        "models:/wines-classifier@a",
        "models:/wines-classifier@b",
    ]
    assert deployment.predictor("model-a").readiness.path == "/health/ping"  # probes come from the YAML


INVALID = {
    "traffic does not add up": (
        lambda m: predictors(m)[0].update(traffic=60),
        "traffic must add up to 100 across predictors, got 110",
    ),
    "negative traffic": (lambda m: predictors(m)[0].update(traffic=-10), "traffic"),
    "traffic as a string": (lambda m: predictors(m)[0].update(traffic="50"), "traffic"),
    "duplicate predictor names": (
        lambda m: predictors(m)[1].update(name="model-a"),
        "predictor names must be unique",
    ),
    "duplicate node names": (
        lambda m: predictors(m)[1]["graph"].update(name="model-a"),
        "graph node names must be unique",
    ),
    "unknown implementation": (
        lambda m: predictors(m)[0]["graph"].update(implementation="MLFLOW_SEVRER"),
        "'MLFLOW_SEVRER' is not a Seldon prepackaged server",
    ),
    "implementation not served locally": (
        lambda m: predictors(m)[0]["graph"].update(implementation="SKLEARN_SERVER"),
        "the local stack serves MLFLOW_SERVER only",
    ),
    "no modelUri": (lambda m: predictors(m)[0]["graph"].pop("modelUri"), "graph.modelUri is missing"),
    "old apiVersion": (
        lambda m: m.update(apiVersion="machinelearning.seldon.io/v1alpha2"),
        "apiVersion must be 'machinelearning.seldon.io/v1'",
    ),
    "wrong kind": (lambda m: m.update(kind="Deployment"), "kind must be 'SeldonDeployment'"),
    "no predictors": (
        lambda m: m["spec"].update(predictors=[]),
        "spec.predictors must list at least one predictor",
    ),
    "upper-case name": (
        lambda m: m["metadata"].update(name="Wines"),
        "metadata.name must be a DNS-1123 label",
    ),
    "graph with children": (
        lambda m: predictors(m)[0]["graph"].update(children=[{"name": "x", "type": "MODEL"}]),
        "has children",
    ),
    "no graph": (lambda m: predictors(m)[0].pop("graph"), "graph"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_manifest_is_refused_with_a_clear_error(case):
    change, message = INVALID[case]
    with pytest.raises(sdep.DeploymentError, match=None) as error:
        sdep.parse(edited(change), source="m.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("m.yaml: ")


def test_schema_errors_name_the_field():
    bad = edited(lambda m: predictors(m)[0].update(replicas="two"))
    errors = sdep.validate_schema(bad)
    assert any(e.startswith("spec.predictors.0.replicas:") for e in errors)
    with pytest.raises(
        sdep.DeploymentError,
        match=r"does not match the SeldonDeployment schema \(seldondeployment-v1.json\): "
        r"spec.predictors.0.replicas",
    ):
        sdep.parse(bad)


def test_a_lone_predictor_takes_all_traffic():
    lone = edited(
        lambda m: (m["spec"].update(predictors=[predictors(m)[0]]), predictors(m)[0].pop("traffic"))
    )
    assert sdep.parse(lone).traffic == {"model-a": 100}


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(sdep.DeploymentError, match="cannot read the manifest"):
        sdep.load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(sdep.DeploymentError, match="not valid YAML"):
        sdep.load(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(sdep.DeploymentError, match="expected a SeldonDeployment mapping"):
        sdep.load(bad)


def test_model_uris_are_resolved_before_starting(trained_arms, tmp_path):
    assert sdep.resolve_model_uri("models:/wines-classifier@a").endswith(
        f"version {trained_arms['a'].version}"
    )
    with pytest.raises(sdep.DeploymentError, match="not found in the MLflow registry"):
        sdep.resolve_model_uri("models:/wines-classifier@nobody")
    with pytest.raises(sdep.DeploymentError, match="a bucket URI is for clusters"):
        sdep.resolve_model_uri("gs://seldon-models/mlflow/model-a")
    with pytest.raises(sdep.DeploymentError, match="no MLflow model there"):
        sdep.resolve_model_uri(str(tmp_path))


def test_set_traffic_keeps_comments_and_refuses_a_bad_split(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.read_text())
    assert set_traffic(path, {"model-a": 100, "model-b": 0}) == {"model-a": 50, "model-b": 50}
    text = path.read_text()
    assert sdep.load(path).traffic == {"model-a": 100, "model-b": 0}
    assert "# distinct node names" in text  # comments survive
    changed = [
        (a, b) for a, b in zip(MANIFEST.read_text().splitlines(), text.splitlines(), strict=True) if a != b
    ]
    assert changed == [("      traffic: 50", "      traffic: 100"), ("      traffic: 50", "      traffic: 0")]
    with pytest.raises(sdep.DeploymentError, match="got 90"):
        set_traffic(path, {"model-a": 90, "model-b": 0})
    with pytest.raises(sdep.DeploymentError, match="no predictors named"):
        set_traffic(path, {"model-c": 100})
    assert sdep.load(path).traffic == {"model-a": 100, "model-b": 0}  # untouched by the refusals


@pytest.mark.parametrize("case", ["traffic does not add up", "unknown implementation"])
@pytest.mark.slow  # a subprocess per case (~4 s): out of make test-fast
def test_cli_refuses_an_invalid_manifest_and_starts_nothing(tmp_path, case):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(edited(INVALID[case][0])))
    state = tmp_path / "state"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.local",
            "--state-dir",
            str(state),
            "up",
            str(manifest),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and INVALID[case][1] in result.stderr
    assert "Traceback" not in result.stderr
    assert not state.exists()  # nothing was started, not even a state folder
