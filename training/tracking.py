"""The tracking store, the registry, and running the MLproject: what the notebook and the other
modules use so that nothing holds a run id; everything is looked up by model name and alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
PROJECT_DIR = REPO / "training"
MODEL_NAME = "wines-classifier"
EXPERIMENT = "wine-quality"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store in the repo folder.

    Absolute, because `mlflow run` starts train.py in ``training/`` and hands it this URI.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"


def use_local_store() -> str:
    """Point this process (and the processes it starts) at the tracking store; return its URI."""
    uri = tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str = EXPERIMENT) -> str:
    """Create the experiment with artifacts in ``mlartifacts/`` beside the store; return its id."""
    uri = tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    store = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else REPO / "mlflow.db"
    return client.create_experiment(name, artifact_location=(store.parent / "mlartifacts").as_uri())


def run_arm(alpha: float, l1_ratio: float, alias: str, seed: int | None = None) -> ModelVersion:
    """Run the MLproject once (`mlflow run training ...`) and return the version it registered."""
    use_local_store()
    ensure_experiment()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(PROJECT_DIR),
        "-P",
        f"alpha={alpha}",
        "-P",
        f"l1_ratio={l1_ratio}",
        "-P",
        f"alias={alias}",
        "--env-manager",
        "local",
        "--experiment-name",
        EXPERIMENT,
    ]
    if seed is not None:
        command += ["-P", f"seed={seed}"]
    # the MLproject runs `python train.py`: make that this interpreter, venv or not
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    # show train.py's own summary lines; MLflow's progress chatter goes to stderr
    print(result.stdout, end="")
    if result.returncode != 0:
        raise RuntimeError(f"`mlflow run` failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return version_for_alias(alias)


def version_for_alias(alias: str, name: str = MODEL_NAME) -> ModelVersion:
    return MlflowClient(tracking_uri()).get_model_version_by_alias(name, alias)


def model_uri(alias: str, name: str = MODEL_NAME) -> str:
    return f"models:/{name}@{alias}"


def set_alias(alias: str, version: str | int, name: str = MODEL_NAME) -> None:
    MlflowClient(tracking_uri()).set_registered_model_alias(name, alias, str(version))


def aliases(name: str = MODEL_NAME) -> dict[str, str]:
    """Alias -> version number of the registered model."""
    return dict(MlflowClient(tracking_uri()).get_registered_model(name).aliases)


class ModelNotFound(LookupError):
    """A ``models:/`` URI names no registered version; the message says which and why."""


def registered_version(model_uri: str) -> ModelVersion:
    """The registry's version that ``models:/name@alias`` or ``models:/name/N`` serves now.

    The one place that resolves registry URIs: the stack's manifest checks, promotion and
    publishing to a bucket all call it, so they agree on what a URI means.
    """
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        raise ModelNotFound(
            f"{model_uri!r} is not a registry URI (models:/<name>@<alias> or models:/<name>/<version>)"
        )
    rest = model_uri[len("models:/") :]
    client = MlflowClient(tracking_uri())
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = rest.partition("/")
        return client.get_model_version(name, number)
    except MlflowException as e:
        raise ModelNotFound(
            f"{model_uri}: not found in the MLflow registry at {tracking_uri()} ({e.message.splitlines()[0]})"
        ) from e
