"""The deploy helper's calls, waits and timeouts - without an API server.

No Kubernetes API server can run on these machines: ``FakeKubernetesApiServer`` stands in for it
behind the kubernetes client's CustomObjectsApi interface. The waits are real, with polls of a few
milliseconds. The manifests are the real rendered ones; the errors are the client's ApiException.
"""

from __future__ import annotations

import json
import time

import pytest

from serving.cluster import deploy, render
from serving.cluster.deploy import DeployError, DeployTimeout
from tests.cluster.helpers import FakeKubernetesApiServer
from tests.cluster.test_render import SECRET, URIS

CREATING = {"state": "Creating", "deploymentStatus": {"wines-classifier-model-a-0-model-a": {"replicas": 1}}}
AVAILABLE = {
    "state": "Available",
    "deploymentStatus": {
        "wines-classifier-model-a-0-model-a": {"replicas": 1, "availableReplicas": 1},
        "wines-classifier-model-b-0-model-b": {"replicas": 1, "availableReplicas": 1},
    },
}


@pytest.fixture
def manifest(crd):
    return render.plain(render.render_deployment(URIS, "seldon", env_secret=SECRET, crd=crd))


def run(api, manifest, **kwargs):
    """apply + wait_available with millisecond polls; returns (applied, status, messages, seconds waited)."""
    kwargs = {"poll": 0.01, "timeout": 5, "settle": 0.2, **kwargs}
    messages = []
    applied = deploy.apply(manifest, api=api)
    start = time.monotonic()
    status = deploy.wait_available(
        applied.name,
        applied.namespace,
        api=api,
        log=messages.append,
        spec_changed=applied.action == "replaced" and applied.spec_changed,
        **kwargs,
    )
    return applied, status, messages, time.monotonic() - start


def gets(api):
    return sum(1 for c in api.calls if c[0] == "get")


def test_deploy_without_api_server_creates_then_waits_until_available(manifest):
    api = FakeKubernetesApiServer(statuses=[{}, CREATING, CREATING, AVAILABLE])
    applied, status, messages, _ = run(api, manifest)

    assert applied.action == "created"
    assert api.calls[0] == (
        "create",
        "machinelearning.seldon.io",
        "v1",
        "seldon",
        "seldondeployments",
        "wines-classifier",
    )
    assert status["state"] == "Available"
    assert messages == [
        "SeldonDeployment seldon/wines-classifier: no status yet; no Deployments reported yet",
        "SeldonDeployment seldon/wines-classifier: Creating; "
        "wines-classifier-model-a-0-model-a 0/1 available",
        "SeldonDeployment seldon/wines-classifier: Available",
    ]
    assert gets(api) == 4  # one poll per status the operator wrote
    assert api.objects[("seldon", "wines-classifier")]["spec"] == manifest["spec"]


def test_deploy_without_api_server_replaces_an_existing_deployment_at_its_resource_version(manifest):
    old = render.plain(render.render_deployment(URIS, "seldon", env_secret=SECRET))
    old["spec"]["predictors"][0]["traffic"], old["spec"]["predictors"][1]["traffic"] = 90, 10
    api = FakeKubernetesApiServer(existing=[old], statuses=[CREATING, AVAILABLE])
    applied, status, _, _ = run(api, manifest)

    assert [c[0] for c in api.calls[:3]] == ["create", "get", "replace"]
    assert applied.action == "replaced" and applied.spec_changed
    assert applied.generation == 2
    stored = api.objects[("seldon", "wines-classifier")]
    assert [p["traffic"] for p in stored["spec"]["predictors"]] == [50, 50]
    assert status["state"] == "Available"


def test_deploy_without_api_server_retries_a_replace_that_raced_another_writer(manifest):
    api = FakeKubernetesApiServer(existing=[manifest], statuses=[AVAILABLE], fail={"replace": [409]})
    applied = deploy.apply(manifest, api=api)
    assert applied.action == "replaced"
    assert [c[0] for c in api.calls] == ["create", "get", "replace", "get", "replace"]


def test_deploy_without_api_server_does_not_trust_a_stale_available_after_a_changed_spec(manifest):
    # Seldon 1.17.1 never writes status.observedGeneration: after a replace the old Available shows
    old = render.plain(render.render_deployment(URIS, "seldon", env_secret=SECRET))
    old["spec"]["predictors"][0]["replicas"] = 3
    old["status"] = AVAILABLE
    api = FakeKubernetesApiServer(existing=[old], statuses=[AVAILABLE])
    _, status, _, waited = run(api, manifest, settle=0.3)
    assert status["state"] == "Available"
    assert waited >= 0.3 and gets(api) > 10  # it kept polling until the state had held

    # an unchanged spec (same generation) is Available at once
    api = FakeKubernetesApiServer(existing=[manifest], statuses=[AVAILABLE])
    applied, _, _, _ = run(api, manifest, settle=0.3)
    assert not applied.spec_changed and gets(api) == 2  # apply's get, then one poll


def test_deploy_without_api_server_uses_observed_generation_when_the_operator_reports_it(manifest):
    old = render.plain(render.render_deployment(URIS, "seldon", env_secret=SECRET))
    old["spec"]["predictors"][0]["replicas"] = 3
    stale = dict(AVAILABLE, observedGeneration=1)
    fresh = dict(AVAILABLE, observedGeneration=2)
    api = FakeKubernetesApiServer(existing=[old], statuses=[stale, stale, fresh])
    _, status, _, waited = run(api, manifest, settle=60)
    assert status["observedGeneration"] == 2
    assert gets(api) == 1 + 3 and waited < 5  # two polls on the stale status, no settle wait


def test_deploy_without_api_server_waits_for_every_replica(manifest):
    half = {"state": "Available", "deploymentStatus": {"d": {"replicas": 2, "availableReplicas": 1}}}
    full = {"state": "Available", "deploymentStatus": {"d": {"replicas": 2, "availableReplicas": 2}}}
    api = FakeKubernetesApiServer(statuses=[half, half, full])
    _, status, _, _ = run(api, manifest)
    assert status["deploymentStatus"]["d"]["availableReplicas"] == 2 and gets(api) == 3


def test_deploy_without_api_server_times_out_naming_the_last_state_and_what_to_look_at(manifest):
    api = FakeKubernetesApiServer(statuses=[CREATING])
    start = time.monotonic()
    with pytest.raises(DeployTimeout) as error:
        run(api, manifest, timeout=0.3, poll=0.05)
    assert 0.3 <= time.monotonic() - start < 3
    message = str(error.value)
    assert "not Available after 0.3 s" in message
    assert "last state 'Creating'" in message
    assert "wines-classifier-model-a-0-model-a 0/1 available" in message
    assert "kubectl get pods -n seldon -l seldon-deployment-id=wines-classifier" in message
    assert isinstance(error.value, TimeoutError)


def test_deploy_without_api_server_stops_at_failed_with_the_operators_description(manifest):
    failed = {"state": "Failed", "description": "Deployment is no longer progressing and not available."}
    api = FakeKubernetesApiServer(statuses=[CREATING, failed])
    with pytest.raises(DeployError, match="failed: Deployment is no longer progressing") as error:
        run(api, manifest)
    assert not isinstance(error.value, DeployTimeout)


@pytest.mark.parametrize(
    "status, problem",
    [
        (404, "no seldondeployments.machinelearning.seldon.io/v1 .* install Seldon Core v1.17.1"),
        (403, "not allowed \\(403\\).*create, get and update"),
        (422, "refused as invalid \\(422\\).*webhook"),
        (500, "answered 500"),
    ],
)
def test_deploy_without_api_server_explains_what_the_api_server_refused(manifest, status, problem):
    api = FakeKubernetesApiServer(fail={"create": [status]})
    with pytest.raises(DeployError, match=problem):
        deploy.apply(manifest, api=api)


def test_deploy_without_api_server_a_missing_namespace_is_not_called_a_missing_crd(manifest):
    # the API server's 404 for a missing namespace is a Status naming it; for a missing CRD a bare page
    api = FakeKubernetesApiServer(namespaces={"default"})
    with pytest.raises(
        DeployError, match="namespace 'seldon' does not exist.*kubectl create namespace seldon"
    ):
        deploy.apply(manifest, api=api)
    api = FakeKubernetesApiServer(crd=False)
    with pytest.raises(
        DeployError, match="no seldondeployments.machinelearning.seldon.io/v1 .* install Seldon"
    ):
        deploy.apply(manifest, api=api)


def test_deploy_without_api_server_ensure_namespace_then_secret_then_deploy(manifest):
    api = FakeKubernetesApiServer(namespaces={"default"}, statuses=[AVAILABLE])
    assert deploy.ensure_namespace("seldon", api=api) is True
    assert deploy.ensure_namespace("seldon", api=api) is False  # exists: nothing to do
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "seldon"}}
    assert deploy.apply_secret(secret, api=api) == "created"
    assert deploy.apply_secret(secret, api=api) == "replaced"
    assert deploy.deploy(manifest, api=api, log=None, poll=0.01)["state"] == "Available"


def test_deploy_without_api_server_keeps_kubectls_last_applied_configuration(manifest):
    # kubectl apply records the manifest it applied; a replace without it would make the next
    # `kubectl apply -f` merge against nothing and keep fields the reader removed
    old = render.plain(render.render_deployment(URIS, "seldon", env_secret=SECRET))
    old["spec"]["predictors"][0]["traffic"], old["spec"]["predictors"][1]["traffic"] = 90, 10
    api = FakeKubernetesApiServer(existing=[old], statuses=[AVAILABLE])
    deploy.apply(manifest, api=api)
    stored = api.objects[("seldon", "wines-classifier")]
    recorded = json.loads(stored["metadata"]["annotations"][deploy.LAST_APPLIED])
    assert recorded["spec"] == manifest["spec"]
    assert "resourceVersion" not in recorded["metadata"] and "status" not in recorded


def test_deploy_without_api_server_refuses_a_registry_model_uri_before_calling_the_api():
    local = render.load_plain()
    api = FakeKubernetesApiServer()
    with pytest.raises(DeployError, match="is not a bucket.*Publish and render first"):
        deploy.apply(local, api=api)
    assert api.calls == []


def test_deploy_without_api_server_refuses_a_broken_manifest_before_calling_the_api(manifest):
    manifest["spec"]["predictors"][0]["traffic"] = 70
    api = FakeKubernetesApiServer()
    with pytest.raises(DeployError, match="traffic must add up to 100"):
        deploy.apply(manifest, api=api)
    assert api.calls == []


def test_deploy_without_api_server_deploy_applies_then_waits(manifest):
    api = FakeKubernetesApiServer(statuses=[AVAILABLE])
    start = time.monotonic()
    status = deploy.deploy(manifest, api=api, log=None, poll=5)
    assert time.monotonic() - start < 1  # Available at the first poll: no sleep
    assert status["state"] == "Available"
    assert deploy.delete("wines-classifier", "seldon", api=api) is True
    assert deploy.delete("wines-classifier", "seldon", api=api) is False


def test_deploy_without_api_server_wait_rejects_nonsense_timeouts():
    with pytest.raises(ValueError, match="timeout and poll must be positive"):
        deploy.wait_available("x", "y", api=FakeKubernetesApiServer(), timeout=0)


def test_without_kubernetes_credentials_the_client_error_says_what_to_do(tmp_path, monkeypatch):
    # the real kubernetes client config loaders, with no kubeconfig and outside a pod
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DeployError, match="no Kubernetes credentials.*KUBECONFIG"):
        deploy.custom_objects_api()
