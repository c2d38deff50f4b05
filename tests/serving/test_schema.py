"""The project's SeldonDeployment schema: what it accepts and refuses, and how it compares with
Seldon Core v1.17.1's CRD on a corpus of valid and broken manifests.

Every case runs against the project's schema on any clone. The side-by-side comparison needs the
CRD reference copy beside the checkout (../shared/reference) and skips, saying so, without it.
Where the two disagree, the case names its reason, one of the sections of serving/schema/README.md.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import jsonschema
import pytest
import yaml

from serving import deployment as sdep
from serving import schema
from tests.conftest import MANIFEST, REPO

BASE = yaml.safe_load(MANIFEST.read_text())
README = (REPO / "serving" / "schema" / "README.md").read_text()


def edit(*changes):
    """A copy of the committed manifest with ``changes`` (functions of the copy) applied."""

    def apply():
        manifest = copy.deepcopy(BASE)
        for change in changes:
            change(manifest)
        return manifest

    return apply


def predictor(i):
    return lambda m: m["spec"]["predictors"][i]


def container(m, i=0):
    return m["spec"]["predictors"][i]["componentSpecs"][0]["spec"]["containers"][0]


def node(name, **fields):
    return {"name": name, "type": "MODEL", "implementation": "MLFLOW_SERVER", **fields}


def bandit(m):
    """serving/model-bandit.yaml's form: one predictor whose ROUTER graph node picks an arm."""
    m["spec"]["predictors"] = [
        {
            "name": "bandit",
            "traffic": 100,
            "graph": {
                "name": "eg-router",
                "type": "ROUTER",
                "parameters": [
                    {"name": "n_branches", "value": "2", "type": "INT"},
                    {"name": "epsilon", "value": "0.1", "type": "FLOAT"},
                    {"name": "verbose", "value": "false", "type": "BOOL"},
                ],
                "logger": {"mode": "response"},
                "children": [
                    node("model-a", modelUri="models:/wines-classifier@a", children=[]),
                    node("model-b", modelUri="models:/wines-classifier@b", children=[]),
                ],
            },
            "componentSpecs": [
                {"spec": {"containers": [{"name": "eg-router", "image": "registry.example/router:0.1"}]}}
            ],
        }
    ]


def shadow(m):
    """serving/model-shadow.yaml's form: model-a serves, model-b gets a mirror of the traffic."""
    a, b = m["spec"]["predictors"]
    a["traffic"] = 100
    b.update(shadow=True, traffic=0)


def deep_children(m):
    leaf = node("leaf", modelUri="gs://bucket/leaf")
    inner = {"name": "combiner", "type": "COMBINER", "children": [leaf, node("other", modelUri="s3://b/o")]}
    m["spec"]["predictors"][0]["graph"] = {
        "name": "input",
        "type": "TRANSFORMER",
        "children": [{"name": "router", "type": "ROUTER", "children": [inner]}],
    }


def kubernetes_extras(m):
    p = m["spec"]["predictors"][0]
    component = p["componentSpecs"][0]
    component["hpaSpec"] = {"minReplicas": 1, "maxReplicas": 3, "metrics": [{"type": "Resource"}]}
    component["pdbSpec"] = {"minAvailable": "50%"}
    component["metadata"] = {"labels": {"team": "ml"}}
    pod = component["spec"]
    pod["nodeSelector"] = {"pool": "cpu"}
    pod["tolerations"] = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    pod["volumes"] = [{"name": "cache", "emptyDir": {}}]
    pod["terminationGracePeriodSeconds"] = 20
    c = pod["containers"][0]
    c["image"] = "registry.example/mlflow-seldon-server:0.1.0"
    c["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 1}}
    c["volumeMounts"] = [{"name": "cache", "mountPath": "/cache"}]
    c["ports"] = [{"containerPort": 9000, "name": "http"}]
    c["env"].append({"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    p["svcOrchSpec"] = {"env": [{"name": "SELDON_LOG_LEVEL", "value": "INFO"}], "resources": {}}
    p["engineResources"] = {"requests": {"cpu": "100m"}}
    p["annotations"] = {"version": "v1", "seldon.io/svc-name": "arm-a"}
    p["ssl"] = {"certSecretName": "tls"}
    p["explainer"] = {"type": "AnchorTabular", "modelUri": "gs://bucket/explainer"}
    m["metadata"]["labels"] = {"app": "wines"}
    m["spec"].update(name="wines", annotations={"seldon.io/engine-separate-pod": "false"})


def as_kubectl_returns_it(m):
    m["metadata"].update(
        uid="1f0c9e8a-0000-4000-8000-000000000000",
        resourceVersion="4711",
        generation=2,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "kubectl"}],
    )
    m["status"] = {"state": "Available", "replicas": 2}


VALID = {
    "the committed A/B manifest": edit(),
    "rendered for a cluster (bucket modelUri, Secret, namespace)": edit(
        lambda m: m["metadata"].update(namespace="seldon"),
        *(
            lambda m, i=i: predictor(i)(m)["graph"].update(
                modelUri=f"gs://bucket/wines-classifier/{i + 1}", envSecretRefName="seldon-rclone-secret"
            )
            for i in (0, 1)
        ),
    ),
    "a shadow predictor": edit(shadow),
    "request loggers on graph nodes": edit(
        lambda m: predictor(0)(m)["graph"].update(logger={"url": "http://127.0.0.1:9/", "mode": "all"}),
        lambda m: predictor(1)(m)["graph"].update(logger={"mode": "request"}),
    ),
    "a ROUTER graph with children (bandit)": edit(bandit),
    "children nested three deep": edit(deep_children),
    "Kubernetes extras (HPA, PDB, resources, volumes, explainer...)": edit(kubernetes_extras),
    "as `kubectl get -o yaml` returns it": edit(as_kubectl_returns_it),
    "a lone predictor without traffic or componentSpecs": edit(
        lambda m: m["spec"].update(predictors=[m["spec"]["predictors"][0]]),
        lambda m: [predictor(0)(m).pop(k) for k in ("traffic", "componentSpecs")],
    ),
    "v2 protocol over gRPC": edit(lambda m: m["spec"].update(protocol="v2", transport="grpc")),
}

# broken manifests both refuse: (the change, the path the project's error names)
BROKEN = {
    "traffic as a string": (
        edit(lambda m: predictor(0)(m).update(traffic="50")),
        "spec.predictors.0.traffic",
    ),
    "replicas as a string": (
        edit(lambda m: predictor(0)(m).update(replicas="two")),
        "spec.predictors.0.replicas",
    ),
    "no graph": (edit(lambda m: predictor(0)(m).pop("graph")), "spec.predictors.0"),
    "no predictor name": (edit(lambda m: predictor(1)(m).pop("name")), "spec.predictors.1"),
    "no predictors key": (edit(lambda m: m["spec"].pop("predictors")), "spec"),
    "graph without a name": (edit(lambda m: predictor(0)(m)["graph"].pop("name")), "spec.predictors.0.graph"),
    "children not a list": (
        edit(lambda m: predictor(0)(m)["graph"].update(children={"name": "x"})),
        "spec.predictors.0.graph.children",
    ),
    "a child without a name": (
        edit(lambda m: predictor(0)(m)["graph"].update(children=[{"type": "MODEL"}])),
        "spec.predictors.0.graph.children.0",
    ),
    "a parameter value as a number": (
        edit(bandit, lambda m: predictor(0)(m)["graph"]["parameters"][1].update(value=0.1)),
        "spec.predictors.0.graph.parameters.1.value",
    ),
    "a parameter without a type": (
        edit(bandit, lambda m: predictor(0)(m)["graph"]["parameters"][0].pop("type")),
        "spec.predictors.0.graph.parameters.0",
    ),
    "shadow as a string": (edit(lambda m: predictor(1)(m).update(shadow="yes")), "spec.predictors.1.shadow"),
    "logger url as a number": (
        edit(lambda m: predictor(0)(m)["graph"].update(logger={"url": 8080, "mode": "all"})),
        "spec.predictors.0.graph.logger.url",
    ),
    "a label value as a number": (
        edit(lambda m: predictor(0)(m).update(labels={"version": 1})),
        "spec.predictors.0.labels.version",
    ),
    "an env value as a number": (
        edit(lambda m: container(m)["env"][0].update(value=1)),
        "spec.predictors.0.componentSpecs.0.spec.containers.0.env.0.value",
    ),
    "a container without a name": (
        edit(lambda m: container(m).pop("name")),
        "spec.predictors.0.componentSpecs.0.spec.containers.0",
    ),
    "a probe period as a string": (
        edit(lambda m: container(m)["livenessProbe"].update(periodSeconds="5")),
        "spec.predictors.0.componentSpecs.0.spec.containers.0.livenessProbe.periodSeconds",
    ),
    "a probe without a port": (
        edit(lambda m: container(m)["readinessProbe"]["httpGet"].pop("port")),
        "spec.predictors.0.componentSpecs.0.spec.containers.0.readinessProbe.httpGet",
    ),
    "a CPU request that is not a quantity": (
        edit(lambda m: container(m).update(resources={"requests": {"cpu": "lots"}})),
        "spec.predictors.0.componentSpecs.0.spec.containers.0.resources.requests.cpu",
    ),
    "a fractional CPU as a YAML float": (
        edit(lambda m: container(m).update(resources={"limits": {"cpu": 0.5}})),
        "spec.predictors.0.componentSpecs.0.spec.containers.0.resources.limits.cpu",
    ),
    "componentSpecs as a mapping": (
        edit(lambda m: predictor(0)(m).update(componentSpecs={"spec": {}})),
        "spec.predictors.0.componentSpecs",
    ),
    "an HPA without maxReplicas": (
        edit(lambda m: predictor(0)(m)["componentSpecs"][0].update(hpaSpec={"minReplicas": 1})),
        "spec.predictors.0.componentSpecs.0.hpaSpec",
    ),
    "spec as a list": (edit(lambda m: m.update(spec=[BASE["spec"]])), "spec"),
    "metadata as a string": (edit(lambda m: m.update(metadata="wines-classifier")), "metadata"),
}

# broken manifests only the project's schema refuses: (the change, the path, the README section)
STRICTER = {
    "misspelt traffic": (
        edit(lambda m: predictor(0)(m).update(trafic=predictor(0)(m).pop("traffic"))),
        "spec.predictors.0",
        "Unknown keys",
    ),
    "modelURI in the wrong case": (
        edit(lambda m: predictor(0)(m)["graph"].update(modelURI=predictor(0)(m)["graph"].pop("modelUri"))),
        "spec.predictors.0.graph",
        "Unknown keys",
    ),
    "misspelt implementation key": (
        edit(lambda m: predictor(1)(m)["graph"].update(implementaton="MLFLOW_SERVER")),
        "spec.predictors.1.graph",
        "Unknown keys",
    ),
    "componentSpec (singular)": (
        edit(lambda m: predictor(0)(m).update(componentSpec=predictor(0)(m).pop("componentSpecs"))),
        "spec.predictors.0",
        "Unknown keys",
    ),
    "a misspelt probe": (
        edit(lambda m: container(m).update(livenesProbe=container(m).pop("livenessProbe"))),
        "spec.predictors.0.componentSpecs.0.spec.containers.0",
        "Unknown keys",
    ),
    "a misspelt namespace key": (
        edit(lambda m: m["metadata"].update(namepsace=m["metadata"].pop("namespace"))),
        "metadata",
        "Unknown keys",
    ),
    "specs instead of spec": (edit(lambda m: m.update(specs=m.pop("spec"))), "<root>", "Unknown keys"),
    "an upper-case deployment name": (
        edit(lambda m: m["metadata"].update(name="Wines")),
        "metadata.name",
        "Names",
    ),
    "an underscore in the deployment name": (
        edit(lambda m: m["metadata"].update(name="wines_classifier")),
        "metadata.name",
        "Names",
    ),
    "a 64-character deployment name": (
        edit(lambda m: m["metadata"].update(name="w" * 64)),
        "metadata.name",
        "Names",
    ),
    "a bad namespace": (
        edit(lambda m: m["metadata"].update(namespace="My-NS")),
        "metadata.namespace",
        "Names",
    ),
    "no deployment name": (edit(lambda m: m["metadata"].pop("name")), "metadata", "Names"),
    "a space in a predictor name": (
        edit(lambda m: predictor(0)(m).update(name="model a")),
        "spec.predictors.0.name",
        "Names",
    ),
    "an underscore in a graph node name": (
        edit(lambda m: predictor(0)(m)["graph"].update(name="model_a")),
        "spec.predictors.0.graph.name",
        "Names",
    ),
    "an upper-case container name": (
        edit(lambda m: container(m).update(name="Model-A")),
        "spec.predictors.0.componentSpecs.0.spec.containers.0.name",
        "Names",
    ),
    "an unknown graph type": (
        edit(lambda m: predictor(0)(m)["graph"].update(type="MODELL")),
        "spec.predictors.0.graph.type",
        "Fixed values",
    ),
    "an unknown logger mode": (
        edit(lambda m: predictor(0)(m)["graph"].update(logger={"mode": "everything"})),
        "spec.predictors.0.graph.logger.mode",
        "Fixed values",
    ),
    "an unknown parameter type": (
        edit(bandit, lambda m: predictor(0)(m)["graph"]["parameters"][0].update(type="INTEGER")),
        "spec.predictors.0.graph.parameters.0.type",
        "Fixed values",
    ),
    "an unknown method": (
        edit(lambda m: predictor(0)(m)["graph"].update(methods=["PREDICT"])),
        "spec.predictors.0.graph.methods.0",
        "Fixed values",
    ),
    "an unknown endpoint type": (
        edit(lambda m: predictor(0)(m)["graph"].update(endpoint={"type": "HTTP"})),
        "spec.predictors.0.graph.endpoint.type",
        "Fixed values",
    ),
    "an unknown protocol": (
        edit(lambda m: m["spec"].update(protocol="http")),
        "spec.protocol",
        "Fixed values",
    ),
    "an old apiVersion": (
        edit(lambda m: m.update(apiVersion="machinelearning.seldon.io/v1alpha2")),
        "apiVersion",
        "Fixed values",
    ),
    "another kind": (edit(lambda m: m.update(kind="Deployment")), "kind", "Fixed values"),
    "negative traffic": (
        edit(lambda m: predictor(0)(m).update(traffic=-10)),
        "spec.predictors.0.traffic",
        "Numbers",
    ),
    "traffic over 100": (
        edit(lambda m: predictor(0)(m).update(traffic=150)),
        "spec.predictors.0.traffic",
        "Numbers",
    ),
    "negative replicas": (
        edit(lambda m: predictor(0)(m).update(replicas=-1)),
        "spec.predictors.0.replicas",
        "Numbers",
    ),
    "no spec": (edit(lambda m: m.pop("spec")), "<root>", "Required parts"),
    "no predictors": (edit(lambda m: m["spec"].update(predictors=[])), "spec.predictors", "Required parts"),
    "a logger without a mode": (
        edit(lambda m: predictor(0)(m)["graph"].update(logger={"url": "http://127.0.0.1:9/"})),
        "spec.predictors.0.graph.logger",
        "Required parts",
    ),
}

# broken manifests only the CRD refuses (inside Kubernetes types the project does not model)
LOOSER = {
    "a toleration with a numeric key": edit(
        lambda m: predictor(0)(m)["componentSpecs"][0]["spec"].update(tolerations=[{"key": 1}])
    ),
    "node affinity as a string": edit(
        lambda m: predictor(0)(m)["componentSpecs"][0]["spec"].update(affinity={"nodeAffinity": "x"})
    ),
    "an env valueFrom with a numeric field path": edit(
        lambda m: container(m)["env"].append({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": 1}}})
    ),
}
LOOSER_REASON = "Inside Kubernetes' own types the project does not read"


def errors_at(errors: list[str], path: str) -> bool:
    return any(e.startswith((f"{path}:", f"{path} ")) for e in errors)


# ------------------------------------------------------------- the project's schema, any clone
def test_the_schema_file_is_a_valid_draft_7_schema():
    jsonschema.Draft7Validator.check_schema(schema.document())


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_manifests_are_accepted(case):
    assert schema.errors(VALID[case]()) == []


@pytest.mark.parametrize("case", sorted(BROKEN) + sorted(STRICTER))
def test_broken_manifests_are_refused_naming_the_field(case):
    change, path = BROKEN[case] if case in BROKEN else STRICTER[case][:2]
    errors = schema.errors(change())
    assert errors_at(errors, path), errors


@pytest.mark.parametrize("case", sorted(LOOSER))
def test_what_the_schema_leaves_to_the_api_server(case):
    assert schema.errors(LOOSER[case]()) == []


def test_a_misspelt_key_gets_a_suggestion():
    errors = schema.errors(STRICTER["misspelt traffic"][0]())
    assert errors == [
        "spec.predictors.0: unknown key 'trafic' (did you mean 'traffic'?); this object takes annotations, "
        "componentSpecs, engineResources, explainer, graph, labels, name, replicas, shadow, ssl, "
        "svcOrchSpec, traffic"
    ]


def test_every_difference_is_documented():
    sections = {reason for *_, reason in STRICTER.values()} | {LOOSER_REASON}
    for section in sections:
        assert f"**{section}" in README, section


def test_a_clone_without_shared_validates_the_same_way(tmp_path):
    """The serving package alone (no ../shared anywhere above it) gives the same verdicts."""
    clone = tmp_path / "clone"
    (clone / "serving").mkdir(parents=True)
    for name in ("__init__.py", "schema.py", "deployment.py"):
        shutil.copy(REPO / "serving" / name, clone / "serving" / name)
    shutil.copytree(REPO / "serving" / "schema", clone / "serving" / "schema")
    cases = {"valid": VALID["a shadow predictor"](), "broken": STRICTER["misspelt traffic"][0]()}
    script = (
        "import json, sys\n"
        "from serving import schema\n"
        "print(json.dumps({k: schema.errors(v) for k, v in json.load(sys.stdin).items()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=clone,
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(clone)},
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "shared").exists()
    assert json.loads(result.stdout) == {k: schema.errors(v) for k, v in cases.items()}


# ------------------------------------------------------------------- side by side with the CRD
@pytest.mark.parametrize("case", sorted(VALID))
def test_the_crd_accepts_the_valid_corpus_too(crd, case):
    assert schema.crd_errors(VALID[case](), crd) == []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_both_refuse_the_broken_corpus(crd, case):
    change, path = BROKEN[case]
    assert schema.crd_errors(change(), crd), "the CRD accepts it: move the case to STRICTER with its reason"
    assert errors_at(schema.errors(change()), path)


@pytest.mark.parametrize("case", sorted(STRICTER))
def test_where_the_project_is_stricter_the_crd_accepts(crd, case):
    change, path, reason = STRICTER[case]
    assert schema.crd_errors(change(), crd) == [], "the CRD refuses it too: move the case to BROKEN"
    assert errors_at(schema.errors(change()), path)


@pytest.mark.parametrize("case", sorted(LOOSER))
def test_where_the_project_is_looser_the_crd_refuses(crd, case):
    assert schema.crd_errors(LOOSER[case](), crd)
    assert schema.errors(LOOSER[case]()) == []


def test_parse_can_check_against_a_crd_as_well(crd):
    bad = LOOSER["node affinity as a string"]()
    assert sdep.validate_schema(bad) == []
    problems = sdep.validate_schema(bad, crd)
    assert problems and all(p.endswith(f"(CRD {crd.name})") for p in problems)
    with pytest.raises(sdep.DeploymentError, match="nodeAffinity"):
        sdep.parse(bad, crd=crd, local=False)
