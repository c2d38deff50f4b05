"""serving/model-bandit.yaml on a cluster: the image runs its router, render and publish handle a
ROUTER graph (the children hold the models, the router node is left alone), routing injection
reaches the executor."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from serving import deployment as sdep
from serving.cluster import ClusterError, render
from serving.cluster import publish as pub
from serving.cluster import server_image as si
from serving.cluster.render import REPO

BANDIT = REPO / "serving" / "model-bandit.yaml"
IMAGE = "ghcr.io/you/mlflow-seldon-server:0.1.0"
URIS = {"model-a": "gs://public-bucket/x/1", "model-b": "gs://public-bucket/x/2"}
SECRET = "seldon-rclone-secret"


# ------------------------------------------------------------------------------------ the image
def stage(tmp_path: Path, dockerfile_text: str | None = None) -> tuple[Path, Path]:
    """A copy of the build context: what the image COPYs, its Dockerfile, the bandit manifest."""
    context = tmp_path / "context"
    files = [
        "serving/__init__.py",
        "serving/mlflow_server.py",
        "serving/microservice.py",
        "serving/model-bandit.yaml",
        "serving/cluster/image/requirements.txt",
        "serving/cluster/image/constraints.txt",
        "serving/cluster/image/Dockerfile.dockerignore",
        "serving/cluster/image/Dockerfile",
        *(p.relative_to(REPO).as_posix() for p in (REPO / "serving" / "routers").glob("*.py")),
    ]
    for relative in files:
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, context / relative)
    dockerfile = context / "serving/cluster/image/Dockerfile"
    if dockerfile_text is not None:
        dockerfile.write_text(dockerfile_text)
    return dockerfile, context


def test_the_image_copies_the_router_the_bandit_manifest_runs(tmp_path):
    assert si.check_dockerfile() == []
    copied = {s for _, sources, _ in si.copies(si.parse()) for s in sources}
    assert {
        "serving/routers/__init__.py",
        "serving/routers/thompson.py",
        "serving/routers/bandit.py",
    } <= copied
    dockerfile, context = stage(tmp_path)
    assert si.check_dockerfile(dockerfile, context) == []  # the staged context is complete


def test_an_image_without_the_routers_is_caught(tmp_path):
    original = si.DOCKERFILE.read_text()
    without = re.sub(r"COPY serving/routers/.*?/app/serving/routers/\n", "", original, flags=re.S)
    assert without != original
    dockerfile, context = stage(tmp_path, without)
    problems = si.check_dockerfile(dockerfile, context)
    assert any(
        p.startswith("model-bandit.yaml: router: serving/routers/__init__.py (serving.routers) is imported")
        for p in problems
    ), problems
    assert not [p for p in si.hadolint(dockerfile) if "routers" in p]  # only the project's check knows


def test_a_router_file_the_dockerignore_drops_is_caught(tmp_path):
    dockerfile, context = stage(tmp_path)
    ignore = context / "serving/cluster/image/Dockerfile.dockerignore"
    ignore.write_text(ignore.read_text().replace("!serving/routers/*.py\n", ""))
    problems = si.check_dockerfile(dockerfile, context)
    assert any("serving/routers/thompson.py is excluded by the .dockerignore" in p for p in problems), (
        problems
    )


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda t: t.replace("serving.routers.ThompsonSampling", "serving.routers.Nope"), "no class Nope"),
        (
            lambda t: t.replace("[python, -m, serving.microservice,", "[seldon-core-microservice,"),
            "does not run",
        ),
    ],
)
def test_a_manifest_router_the_image_cannot_run_is_caught(tmp_path, edit, problem):
    dockerfile, context = stage(tmp_path)
    manifest = context / "serving/model-bandit.yaml"
    text = edit(manifest.read_text())
    assert text != manifest.read_text()
    manifest.write_text(text)
    problems = si.check_dockerfile(dockerfile, context)
    assert any(p.startswith("model-bandit.yaml: router: ") and problem in p for p in problems), problems


# ----------------------------------------------------------------------------------- rendering
def rendered(crd=None, **options) -> dict:
    options = {"image": IMAGE, **options}
    return render.plain(render.render_deployment(URIS, "seldon", source=BANDIT, crd=crd, **options))


def test_the_bandit_renders_with_bucket_children_and_the_project_image_as_router(crd):
    manifest = rendered(crd)
    assert sdep.validate_schema(manifest, crd) == []
    parsed = sdep.parse(manifest, crd=crd, local=False)
    (predictor,) = parsed.predictors
    assert predictor.model_uri == "" and predictor.node == "router"
    assert {c.name: c.model_uri for c in predictor.children} == URIS
    graph = manifest["spec"]["predictors"][0]["graph"]
    assert "modelUri" not in graph and "envSecretRefName" not in graph and graph["type"] == "ROUTER"
    containers = {
        c["name"]: c for c in manifest["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"]
    }
    assert containers["router"]["image"] == IMAGE
    # the arms keep no image: the operator fills MLFLOW_SERVER's from seldon-config (our image too)
    assert "image" not in containers["model-a"] and "image" not in containers["model-b"]
    assert set(render.differences(render.load_plain(BANDIT), manifest)) == {
        "metadata.namespace",
        "spec.predictors[0].graph.children[0].modelUri",
        "spec.predictors[0].graph.children[1].modelUri",
        "spec.predictors[0].componentSpecs[0].spec.containers[0].image",
    }


def test_routing_injection_is_set_where_the_operator_hands_it_to_the_executor(crd):
    # v1.17.1 operator (controllers/seldondeployment_engine.go, createEngineContainer) appends
    # predictor.svcOrchSpec.env to the executor container's env; the executor reads
    # SELDON_ENABLE_ROUTING_INJECTION from its own environment (predictor/predictor_process.go)
    (predictor,) = sdep.parse(rendered(crd), crd=crd, local=False).predictors
    assert predictor.orchestrator_env.get("SELDON_ENABLE_ROUTING_INJECTION") == "true"


def test_a_storage_secret_goes_to_each_child_not_to_the_router(crd):
    manifest = rendered(crd, env_secret=SECRET)
    graph = manifest["spec"]["predictors"][0]["graph"]
    assert "envSecretRefName" not in graph
    assert [c["envSecretRefName"] for c in graph["children"]] == [SECRET, SECRET]
    sdep.parse(manifest, crd=crd, local=False)


def test_the_children_can_be_named_by_their_local_model_uris():
    by_uri = {
        "models:/wines-classifier@a": "s3://mlflow-seldon-models/t/wines-classifier/1",
        "models:/wines-classifier@b": "s3://mlflow-seldon-models/t/wines-classifier/2",
    }
    manifest = render.plain(render.render_deployment(by_uri, "seldon", SECRET, source=BANDIT, image=IMAGE))
    assert [c["modelUri"] for c in manifest["spec"]["predictors"][0]["graph"]["children"]] == list(
        by_uri.values()
    )


@pytest.mark.parametrize(
    "uris, image, problem",
    [
        (URIS, None, "router 'router' runs from the project's model server image"),
        (URIS, "ghcr.io/you/mlflow-seldon-server", "has no tag"),
        ({"model-a": "gs://public-bucket/x/1"}, IMAGE, "model 'model-b'"),
        ({**URIS, "router": "gs://public-bucket/x/3"}, IMAGE, "['router'], which are neither"),
    ],
)
def test_render_refuses_a_bandit_the_cluster_could_not_run(uris, image, problem):
    with pytest.raises(ClusterError, match=re.escape(problem)):
        render.render_deployment(uris, "seldon", source=BANDIT, image=image)


def test_the_rendered_file_says_what_differs(tmp_path):
    path = render.write_deployment(tmp_path / "bandit.yaml", URIS, "seldon", source=BANDIT, image=IMAGE)
    text = path.read_text()
    assert text.startswith("# Generated by `python -m serving.cluster render` from serving/model-bandit.yaml")
    assert "the image of the router's container (router)" in text.split("apiVersion")[0]
    assert (
        yaml.safe_load(text)["spec"]["predictors"][0]["graph"]["children"][1]["modelUri"] == URIS["model-b"]
    )


# ------------------------------------------------------------------------------------ publishing
def test_publish_lists_the_children_s_models_not_the_router():
    assert pub.manifest_model_uris(BANDIT) == ["models:/wines-classifier@a", "models:/wines-classifier@b"]


def test_publish_then_render_the_bandit_through_a_file_bucket(trained_arms, tmp_path, crd):
    bucket = f"file://{tmp_path / 'bucket'}"
    published = pub.publish(bucket, manifest=BANDIT)
    assert set(published) == {"models:/wines-classifier@a", "models:/wines-classifier@b"}
    for alias, version in trained_arms.items():
        p = published[f"models:/wines-classifier@{alias}"]
        assert p.uri == f"{bucket}/wines-classifier/{version.version}" and "MLmodel" in p.files
    # a cluster cannot read file://: the same folders as a gs:// bucket would hold them
    uris = {source: p.uri.replace(bucket, "gs://public-bucket/p") for source, p in published.items()}
    path = render.write_deployment(
        tmp_path / "bandit.yaml", uris, "seldon", source=BANDIT, crd=crd, image=IMAGE
    )
    (predictor,) = sdep.load(path, crd=crd, local=False).predictors
    assert [c.model_uri for c in predictor.children] == [
        f"gs://public-bucket/p/wines-classifier/{trained_arms[alias].version}" for alias in ("a", "b")
    ]


# ------------------------------------------------------------------ the router in the image's env
@pytest.fixture(scope="module")
def image_python():
    try:
        return si.build_env(timeout=300)
    except si.ImageEnvUnavailable as e:  # no venv module, or no package index reachable
        pytest.skip(f"cannot create the image's virtualenv here: {e}")


@pytest.mark.slow
def test_the_manifest_s_router_command_runs_in_the_image_and_learns(image_python, tmp_path):
    """The bandit's router container: the image's files and Python, the manifest's command, env and
    graph parameters as the operator passes them; it routes, learns from a feedback, keeps state."""
    import json
    import subprocess

    import requests

    from serving.local import free_port
    from tests.cluster.helpers import stop, wait_for_port
    from tests.cluster.test_image import operator_env, stage_image_files

    (predictor,) = sdep.load(BANDIT, local=False).predictors
    dockerfile = si.parse()
    root = stage_image_files(tmp_path / "image-root")
    http_port, metrics_port = free_port(), free_port()
    image_env = dockerfile.envs
    state = tmp_path / "router-state"  # the manifest's emptyDir volume
    env = {
        "PATH": f"{image_python.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        **{k: v for k, v in image_env.items() if k != "HOME"},
        "PYTHONPATH": str(root / image_env["PYTHONPATH"].lstrip("/")),
        "SELDON_BIND_HOST": "127.0.0.1",  # the one difference from the pod (0.0.0.0 there)
        **operator_env(tmp_path, http_port, metrics_port, predictor.env),
        "PREDICTIVE_UNIT_PARAMETERS": json.dumps(list(predictor.parameters)),
        "PREDICTIVE_UNIT_ID": predictor.node,
        "ROUTER_STATE_DIR": str(state),
    }
    assert predictor.env["ROUTER_STATE_DIR"] and predictor.env["GUNICORN_WORKERS"] == "1"
    command = [str(image_python), *predictor.command[1:]]
    log = tmp_path / "router.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, cwd=root / "app", env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(http_port, server, timeout=120, log_path=log)
        base = f"http://127.0.0.1:{http_port}"
        body = {"data": {"names": ["x"], "ndarray": [[1.0]]}}
        routed = requests.post(f"{base}/route", json=body, timeout=30)
        assert routed.status_code == 200, log.read_text()[-3000:]
        (branch,) = routed.json()["data"]["ndarray"][0]
        assert branch in (0, 1)
        feedback = {"request": body, "response": {"meta": {"routing": {"router": branch}}}, "reward": 0.8}
        assert requests.post(f"{base}/send-feedback", json=feedback, timeout=30).status_code == 200
        # feedback the router cannot learn from: a clear 400, never a 500
        assert (
            requests.post(f"{base}/send-feedback", json={**feedback, "response": {}}, timeout=30).status_code
            == 400
        )
        saved = json.loads((state / f"{predictor.node}.json").read_text())
        assert saved["n"][branch] == 1 and sum(saved["n"]) == 1
    finally:
        stop(server)


# ------------------------------------------------------------------------------------ the doc
def doc_block() -> str:
    text = (REPO / "docs" / "cluster.md").read_text()
    section = text[text.index("## The bandit: serving/model-bandit.yaml") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_doc_s_bandit_code_renders_a_manifest_the_deploy_helper_accepts(tmp_path, monkeypatch, crd):
    """docs/cluster.md's bandit block as written, with the bucket and the API server left out:
    publish answers what it would for the doc's bucket, deploy checks the file and stops there."""
    from serving.cluster import deploy as dep

    def published(bucket, manifest):
        assert Path(manifest) == Path("serving/model-bandit.yaml")
        return {
            uri: pub.Published(uri, "wines-classifier", str(i), f"{bucket}/wines-classifier/{i}", {}, True)
            for i, uri in enumerate(pub.manifest_model_uris(REPO / manifest), start=1)
        }

    deployed = []
    monkeypatch.setattr(pub, "publish", published)
    monkeypatch.setattr(dep, "deploy", lambda path, timeout: deployed.append(dep._manifest(path, crd)))
    (tmp_path / "serving").symlink_to(REPO / "serving")  # the doc's relative paths, outside the repo
    monkeypatch.chdir(tmp_path)
    exec(compile(doc_block(), "docs/cluster.md (bandit)", "exec"), {})

    (manifest,) = deployed
    graph = manifest["spec"]["predictors"][0]["graph"]
    assert [c["modelUri"] for c in graph["children"]] == [
        "s3://your-bucket/mlflow-seldon/wines-classifier/1",
        "s3://your-bucket/mlflow-seldon/wines-classifier/2",
    ]
    assert (tmp_path / "build/cluster/wines-bandit.yaml").is_file()


def test_deploy_refuses_a_bandit_whose_children_are_not_in_a_bucket(crd):
    from serving.cluster import deploy as dep

    manifest = rendered(crd)
    manifest["spec"]["predictors"][0]["graph"]["children"][1]["modelUri"] = "models:/wines-classifier@b"
    with pytest.raises(dep.DeployError, match="'models:/wines-classifier@b' is not a bucket"):
        dep._manifest(manifest, crd)
    assert dep._manifest(rendered(crd), crd)["metadata"]["name"] == "wines-bandit"


def test_the_doc_s_bandit_section_matches_the_manifest_and_the_router():
    from serving.routers import bandit

    text = (REPO / "docs" / "cluster.md").read_text()
    section = text[text.index("## The bandit: serving/model-bandit.yaml") : text.index("## Clean up")]
    (predictor,) = sdep.load(BANDIT, local=False).predictors
    assert predictor.env["GUNICORN_WORKERS"] == "1" and "GUNICORN_WORKERS=1" in section
    assert "SELDON_ENABLE_ROUTING_INJECTION" in predictor.orchestrator_env and "svcOrchSpec.env" in section
    for gauge in ("router_branch_routed", "router_branch_feedback", "router_branch_reward_mean"):
        assert gauge in section and gauge in Path(bandit.__file__).read_text()
    for answer in ("502", "400 `NO_ROUTING`", "400 `BAD_ROUTING`", "400 `ROUTER_BAD_FEEDBACK`"):
        assert answer in section
