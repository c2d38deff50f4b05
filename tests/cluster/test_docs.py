"""docs/cluster.md's commands against what the tests validate: the CLI, the rendered files, the pins."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml

from serving import deployment as sdep
from serving.cluster import __main__ as cli
from serving.cluster import analytics, helm, server_image
from serving.cluster.render import REPO

DOC = REPO / "docs" / "cluster.md"
TEXT = DOC.read_text()
VARIABLES = {
    "$IMAGE": "ghcr.io/you/mlflow-seldon-server:0.1.0",
    "$BUCKET": "s3://your-bucket/mlflow-seldon",
    "$NS": "seldon",
}


def commands() -> list[str]:
    """Shell commands in the doc's bash blocks, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", TEXT, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def expand(command: str) -> str:
    for name, value in VARIABLES.items():
        command = command.replace(name, value)
    return command


def cli_argv(command: str) -> list[str]:
    command = expand(command).split("|", 1)[0].rstrip(" &")
    return shlex.split(command)[3:]  # drop `python -m serving.cluster`


@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory, crd):
    out = tmp_path_factory.mktemp("build-cluster")
    argv = cli_argv(next(c for c in commands() if c.startswith("python -m serving.cluster render")))
    argv += [
        "--model-uri",
        "model-a=s3://your-bucket/mlflow-seldon/wines-classifier/1",
        "--model-uri",
        "model-b=s3://your-bucket/mlflow-seldon/wines-classifier/2",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return out


def test_every_serving_cluster_command_in_the_doc_parses():
    parser = cli.build_parser()
    found = [c for c in commands() if c.startswith("python -m serving.cluster")]
    assert len(found) >= 10
    for command in found:
        try:
            parser.parse_args(cli_argv(command))
        except SystemExit:
            pytest.fail(f"docs/cluster.md: `{command}` is not a valid command")


def test_every_file_the_doc_applies_is_one_the_tests_render_or_a_committed_file(rendered_dir):
    mentioned = set(re.findall(r"(?:-f|--values)\s+(\S+\.ya?ml)", " ".join(commands())))
    assert mentioned, "no files found in the doc's commands"
    for path in mentioned:
        if path.startswith("build/cluster/"):
            assert (rendered_dir / path[len("build/cluster/") :]).is_file(), f"render does not write {path}"
        else:
            assert (REPO / path).is_file(), f"{path} does not exist"
    for name in re.findall(r"\| `([\w.-]+\.yaml)` \|", TEXT):
        assert (rendered_dir / name).is_file(), f"the doc's table lists {name}, which render does not write"


def test_the_rendered_deployment_the_doc_applies_validates_against_the_crd(rendered_dir, crd):
    manifest = yaml.safe_load((rendered_dir / "wines-classifier.yaml").read_text())
    assert sdep.validate_schema(manifest, crd) == []
    deployment = sdep.parse(manifest, crd=crd, local=False)
    assert deployment.namespace == VARIABLES["$NS"]
    assert "kubectl wait sdep/wines-classifier -n $NS" in TEXT and deployment.name == "wines-classifier"
    values = yaml.safe_load((rendered_dir / "seldon-core-values.yaml").read_text())
    assert helm.prepack_image(values, "MLFLOW_SERVER") == VARIABLES["$IMAGE"]


def test_the_doc_pins_the_versions_the_project_uses():
    assert (
        "--version 1.17.1" in TEXT
        and server_image.read_pins(server_image.REQUIREMENTS)["seldon-core"] == "==1.17.1"
    )
    assert "Apache-2.0" in TEXT and "BSL-1.1" in TEXT
    assert f"helm install {analytics.HELM_RELEASE} kube-prometheus-stack" in TEXT
    assert f"svc/{analytics.HELM_RELEASE}-grafana" in TEXT
    secret = analytics.values()["grafana"]["admin"]
    assert (
        f"get secret -n monitoring {secret['existingSecret']} -o jsonpath='{{.data.{secret['passwordKey']}}}'"
        in TEXT
    )
    assert f"-f {server_image.DOCKERFILE.relative_to(REPO)}" in TEXT


def test_the_printed_feedback_commands_are_what_endpoints_prints(rendered_dir):
    from serving.cluster.endpoints import cluster_endpoints, feedback_args, port_forwards

    manifest = rendered_dir / "wines-classifier.yaml"
    e = cluster_endpoints(manifest, "127.0.0.1:8080")
    printed = re.search(r"```text\n(.*?)```", TEXT, re.S).group(1).splitlines()
    assert printed == [f"{f.command} &" for f in port_forwards(manifest).values()] + [
        "python feedback.py " + " ".join(feedback_args(e))
    ]


@pytest.mark.slow  # runs feedback.py --help in a subprocess (~3 s): out of make test-fast
def test_feedback_py_takes_the_arguments_we_give_it():
    help_text = subprocess.run(
        [sys.executable, str(REPO / "feedback.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    ).stdout
    for option in ("--ingress", "--namespace", "--deployment", "--predictor", "--node"):
        assert option in help_text, f"feedback.py no longer takes {option}"


def test_the_curl_example_sends_the_models_features():
    from training.data import FEATURES

    body = re.search(r"-d '(\{.*?\})'", TEXT).group(1)
    import json

    data = json.loads(body)["data"]
    assert data["names"] == FEATURES and len(data["ndarray"][0]) == len(FEATURES)


def test_the_doc_ends_with_what_the_stand_in_proves_and_what_only_a_cluster_can():
    checklist = TEXT[TEXT.index("### Checklist") :]
    proven, only_real = checklist.split("Only a real cluster can check")
    assert proven.count("- [x]") >= 3 and only_real.count("- [ ]") >= 5
    for part in ("image", "rclone", "Istio", "Grafana"):
        assert part in only_real, f"the checklist does not say {part} needs a real cluster"
    assert "tests/cluster/standin.py" in TEXT and "not Kubernetes" in TEXT
    smoke = [c for c in commands() if c.startswith("python -m serving.cluster smoke")]
    assert smoke and "--ingress" in smoke[0] and "--prometheus" in smoke[0]


def test_the_doc_makes_the_bucket_and_never_drops_the_secret_for_s3():
    assert "aws s3 mb s3://" in TEXT and "gcloud storage buckets create" in TEXT
    assert "helm install minio" in TEXT and "minio.minio.svc.cluster.local:9000" in TEXT
    assert "Drop `--secret`" not in TEXT
    assert "rclone-secret s3-iam" in TEXT
    assert "ISTIO_VERSION=" in TEXT and "--platform linux/amd64" in TEXT
