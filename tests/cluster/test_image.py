"""The model server image: static checks of its Dockerfile, its pins, and its Python environment.

No Docker engine runs here. The compatibility test rebuilds the image's Python environment in a
virtualenv under .envs/ (same Python minor version, the image's requirements + constraints, the
same `pip install` and `pip check`), lays out the files the Dockerfile COPYs as the image would,
and runs the image's CMD with the environment Seldon's operator gives the container - only the
bind address differs (127.0.0.1 instead of the pod's 0.0.0.0). A model saved by our training,
published the way the storage initializer receives it, must load there and predict exactly what
it predicts in training's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests

from serving.cluster import server_image as si
from serving.cluster.render import REPO
from serving.local import free_port
from tests.cluster.helpers import stop, wait_for_port


# ------------------------------------------------------------------------------ static checks
def test_the_dockerfile_passes_its_static_checks():
    assert si.hadolint() == []
    assert si.check_dockerfile() == []


def stage_context(tmp_path: Path, dockerfile_text: str) -> tuple[Path, Path]:
    """A copy of the build context (the files the image needs) with an edited Dockerfile."""
    context = tmp_path / "context"
    for relative in (
        "serving/__init__.py",
        "serving/mlflow_server.py",
        "serving/microservice.py",
        "serving/cluster/image/requirements.txt",
        "serving/cluster/image/constraints.txt",
        "serving/cluster/image/Dockerfile.dockerignore",
    ):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, context / relative)
    dockerfile = context / "serving/cluster/image/Dockerfile"
    dockerfile.write_text(dockerfile_text)
    return dockerfile, context


ORIGINAL = si.DOCKERFILE.read_text()
BASE_IMAGE = "python:3.11.7-slim-bookworm"
CMD = re.compile(r"CMD \[.*\]")

# what hadolint catches (the rule it reports); the project's code no longer checks these
HADOLINT = [
    (lambda t: t.replace(BASE_IMAGE, "python"), "DL3006"),  # not pinned by a tag
    (lambda t: t.replace(BASE_IMAGE, "python:latest"), "DL3007"),
    (lambda t: t.replace("USER 8888", "USER root"), "DL3002"),  # root
    (lambda t: t.replace("USER 8888", "USER seldon"), "DL3066"),  # a name: runAsNonRoot needs the UID
    (lambda t: t.replace("COPY serving/cluster", "ADD serving/cluster"), "DL3020"),  # COPY, not ADD
    (lambda t: CMD.sub("CMD python -m serving.microservice serving.mlflow_server.MLFlowServer", t), "DL3025"),
    (lambda t: t.replace("&& pip check", "&& pip install mlflow && pip check"), "DL3013"),  # unpinned
]


@pytest.mark.parametrize("edit, rule", HADOLINT)
def test_hadolint_catches_the_generic_problems(tmp_path, edit, rule):
    text = edit(ORIGINAL)
    assert text != ORIGINAL, "the edit did not apply"
    dockerfile, context = stage_context(tmp_path, text)
    assert any(
        f": {rule} " in p and p.endswith("(hadolint)") for p in si.check_dockerfile(dockerfile, context)
    )


# what only the project's own checks catch: hadolint passes each of these Dockerfiles
PROJECT = [
    (lambda t: t.replace(BASE_IMAGE, "python:3.9-slim"), "not training's Python"),
    (lambda t: t.replace("USER 8888\n", ""), "no USER"),
    (
        lambda t: t.replace("serving/microservice.py /app", "serving/missing.py /app"),
        "serving/missing.py does not exist",
    ),
    (
        lambda t: t.replace(" serving/microservice.py /app", " /app"),
        "serving/microservice.py (serving.microservice) is imported",
    ),
    (
        lambda t: t.replace("SELDON_BIND_HOST=0.0.0.0", "SELDON_BIND_HOST=127.0.0.1"),
        "executor could not reach",
    ),
    (lambda t: t.replace("-c /app/constraints.txt", ""), "without the constraints file"),
    (
        lambda t: t.replace("&& pip check", "&& pip install mlflow==2.22.5 && pip check"),
        "pip installs ['mlflow==2.22.5']",
    ),
    (
        lambda t: t.replace("-r /app/requirements.txt", "-r /app/other.txt"),
        "pip reads /app/other.txt, which no COPY",
    ),
    (
        lambda t: t.replace("serving.mlflow_server.MLFlowServer", "serving.mlflow_server.Nope"),
        "no class Nope",
    ),
    (lambda t: CMD.sub('CMD ["gunicorn", "app"]', t), "does not run python -m serving.microservice"),
    # stock seldon-core loses feedback counts with the manifest's gunicorn threads
    (
        lambda t: CMD.sub('CMD ["seldon-core-microservice", "serving.mlflow_server.MLFlowServer"]', t),
        "the metrics lock",
    ),
    (
        lambda t: CMD.sub(r'ENTRYPOINT ["python", "-m", "serving.microservice"]\n\g<0>', t),
        "ENTRYPOINT is set",
    ),
    (
        lambda t: t.replace("PYTHONPATH=/app", "PYTHONPATH=/srv").replace("WORKDIR /app", "WORKDIR /srv"),
        "not under the image's PYTHONPATH",
    ),
    (
        lambda t: t.replace(f"FROM {BASE_IMAGE}", f"FROM {BASE_IMAGE} AS build\nFROM {BASE_IMAGE}"),
        "expected one FROM",
    ),
]


@pytest.mark.parametrize("edit, problem", PROJECT)
def test_the_project_checks_catch_what_hadolint_cannot(tmp_path, edit, problem):
    text = edit(ORIGINAL)
    assert text != ORIGINAL, "the edit did not apply"
    dockerfile, context = stage_context(tmp_path, text)
    problems = si.check_dockerfile(dockerfile, context)
    assert any(problem in p for p in problems), problems
    assert not [p for p in si.hadolint(dockerfile) if problem in p], (
        "hadolint catches it: move it to HADOLINT"
    )


def test_a_copied_file_that_the_dockerignore_drops_is_caught(tmp_path):
    dockerfile, context = stage_context(tmp_path, ORIGINAL)
    ignore = context / "serving/cluster/image/Dockerfile.dockerignore"
    ignore.write_text(ignore.read_text().replace("!serving/microservice.py\n", ""))
    assert any("excluded by the .dockerignore" in p for p in si.check_dockerfile(dockerfile, context))


def test_the_image_pins_training_s_versions():
    assert si.pin_drift() == []
    pins = si.read_pins(si.REQUIREMENTS)
    assert pins["seldon-core"] == "==1.17.1"  # Apache-2.0; 1.18+ is BSL-1.1


def test_a_trained_model_requires_exactly_what_the_image_installs(trained_arms, tmp_path):
    for version in trained_arms.values():
        folder = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{version.name}/{version.version}/requirements.txt",
                dst_path=str(tmp_path / str(version.version)),
            )
        )
        assert si.pin_drift(folder) == []


def test_pin_drift_reports_a_version_training_does_not_run(tmp_path):
    model_requirements = tmp_path / "requirements.txt"
    model_requirements.write_text("mlflow==2.22.5\nscikit-learn==0.24.0\nxgboost==2.0.0\n")
    problems = si.pin_drift(model_requirements)
    assert any("scikit-learn==0.24.0, the image pins scikit-learn==1.9.1" in p for p in problems), problems
    assert any("xgboost" in p and "does not install" in p for p in problems), problems


@pytest.mark.slow
def test_constraints_txt_is_what_lock_image_writes(tmp_path):
    """`python -m serving.cluster lock-image` (uv pip compile, constrained to training's versions)
    reproduces the committed constraints.txt: nobody edited it by hand, and training moved nowhere."""
    try:
        written = si.lock(tmp_path / "constraints.txt")
    except si.ImageEnvUnavailable as e:  # no package index reachable
        pytest.skip(f"cannot resolve the image's requirements here: {e}")
    assert si.read_pins(written) == si.read_pins(si.CONSTRAINTS)
    assert written.read_text().startswith("# Every package of the model server image, pinned")


# -------------------------------------------------------------------------- compatibility
@pytest.fixture(scope="module")
def image_python():
    try:
        return si.build_env(timeout=300)
    except si.ImageEnvUnavailable as e:  # no venv module, or no package index reachable
        pytest.skip(f"cannot create the image's virtualenv here: {e}")


def stage_image_files(destination: Path) -> Path:
    """The files the Dockerfile's COPY instructions put in the image, under ``destination`` (its /)."""
    for _, sources, target in si.copies(si.parse()):
        for source in sources:
            into = target + Path(source).name if target.endswith("/") else target
            path = destination / into.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, path)
    return destination


def pings(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def operator_env(model_dir: Path, http_port: int, metrics_port: int, manifest_env: dict) -> dict:
    """What Seldon Core v1.17.1's operator sets on the model container (seldondeployment_controller.go)."""
    return {
        "PREDICTIVE_UNIT_PARAMETERS": json.dumps(
            [{"name": "model_uri", "value": str(model_dir), "type": "STRING"}]
        ),
        "PREDICTIVE_UNIT_SERVICE_PORT": str(http_port),
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http_port),
        "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics_port),
        "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus",
        "PREDICTIVE_UNIT_ID": "model-a",
        "PREDICTIVE_UNIT_IMAGE": "registry.example/mlflow-seldon-server:0.1.0",
        "PREDICTOR_ID": "model-a",
        "PREDICTOR_LABELS": json.dumps({"version": "v1"}),
        "SELDON_DEPLOYMENT_ID": "wines-classifier",
        "SELDON_EXECUTOR_ENABLED": "true",
        **manifest_env,  # the container env of serving/model-a-b.yaml (gunicorn workers/threads)
    }


@pytest.mark.slow
def test_a_trained_model_loads_and_predicts_the_same_values_in_the_image_environment(
    trained_arms, image_python, tmp_path
):
    from serving import deployment as sdep
    from serving.cluster import publish as pub
    from training.data import FEATURES, load_wine_quality, split_holdout

    # the image's Python is training's Python (major.minor), as its FROM line says
    version = subprocess.run(
        [str(image_python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == "{}.{}".format(*sys.version_info[:2])

    # the model as the pod receives it: published to a bucket, copied into /mnt/models by rclone
    published = pub.publish((tmp_path / "bucket").as_uri(), model_uris=["models:/wines-classifier@a"])
    mnt_models = tmp_path / "mnt" / "models"
    shutil.copytree(published["models:/wines-classifier@a"].uri[len("file://") :], mnt_models)

    _, holdout = split_holdout(load_wine_quality())
    rows = holdout[FEATURES].head(50)
    expected = mlflow.pyfunc.load_model(str(mnt_models)).predict(rows)  # training's environment

    # the image's file system: only what the Dockerfile COPYs, at the image's paths
    dockerfile = si.parse()
    root = stage_image_files(tmp_path / "image-root")
    app = root / si.workdir(dockerfile).lstrip("/")
    assert sorted(p.name for p in (app / "serving").iterdir()) == [
        "__init__.py",
        "microservice.py",
        "mlflow_server.py",
        "routers",  # serving/model-bandit.yaml's router runs from this image (tests/cluster/test_bandit.py)
    ]
    image_env = dockerfile.envs
    http_port, metrics_port = free_port(), free_port()
    manifest_env = sdep.load(REPO / "serving" / "model-a-b.yaml", local=False).predictor("model-a").env
    env = {
        "PATH": f"{image_python.parent}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        **{k: v for k, v in image_env.items() if k != "HOME"},
        "PYTHONPATH": str(root / image_env["PYTHONPATH"].lstrip("/")),
        "SELDON_BIND_HOST": "127.0.0.1",  # the one difference from the pod (0.0.0.0 there)
        **operator_env(mnt_models, http_port, metrics_port, manifest_env),
    }
    command = json.loads(dockerfile.cmd)
    assert command[0] == "python"
    command = [str(image_python), *command[1:]]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(http_port, server, timeout=120, log_path=log)
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 120
        while not pings(f"{base}/health/ping"):  # a busy machine may take a while to load the model
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)

        # what the executor calls on the model container (executor/api/client/client.go): /predict
        body = {"data": {"names": FEATURES, "ndarray": rows.values.tolist()}}
        response = requests.post(f"{base}/predict", json=body, timeout=30)
        assert response.status_code == 200, response.text
        served = [row if not isinstance(row, list) else row[0] for row in response.json()["data"]["ndarray"]]
        assert len(served) == len(expected)
        assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) <= 1e-12

        # feedback counts on the metrics port, at the path the PodMonitor scrapes
        feedback = {"request": body, "response": response.json(), "reward": 0.75}
        assert requests.post(f"{base}/send-feedback", json=feedback, timeout=30).status_code == 200
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/prometheus", timeout=10)
        assert metrics.status_code == 200
        reward = [
            line
            for line in metrics.text.splitlines()
            if line.startswith("seldon_api_model_feedback_reward_total{")
        ]
        assert (
            reward
            and 'deployment_name="wines-classifier"' in reward[0]
            and 'predictor_name="model-a"' in reward[0]
        )
        assert float(reward[0].rsplit(" ", 1)[1]) == pytest.approx(0.75)
        assert requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code == 404
    finally:
        stop(server)
    assert server.poll() is not None
