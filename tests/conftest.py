"""Shared fixtures: a real MLflow tracking store with both arms trained, and a real local stack.

Everything runs in a temporary folder with its own SQLite store, its own stack state and free
ports, so the suite never touches the reader's ``mlflow.db`` or a stack they left running.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "serving" / "model-a-b.yaml"
SHARED_DATA = REPO.parent / "shared" / "data" / "wine-quality.csv"
SHARED_CRD = REPO.parent / "shared" / "reference" / "seldon-core-v1.17.1" / "seldondeployments.crd.yaml"


def pytest_configure(config):
    # offline machines and CI read the shared copy of the data set when nobody chose one
    if not os.environ.get("WINE_QUALITY_CSV") and SHARED_DATA.is_file():
        os.environ["WINE_QUALITY_CSV"] = str(SHARED_DATA)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


# fixtures that cost tens of seconds (training with `mlflow run`) or start a real stack: a test
# that uses one is out of `make test-fast` whatever its own markers say
SLOW_FIXTURES = {"trained_arms", "worse_arm"}
STACK_FIXTURES = {"stack"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & STACK_FIXTURES:
            item.add_marker(pytest.mark.stack)
        if fixtures & (SLOW_FIXTURES | STACK_FIXTURES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def crd() -> Path:
    if not SHARED_CRD.is_file():
        pytest.skip("the Seldon CRD reference copy (../shared/reference) is not beside this checkout")
    return SHARED_CRD


@pytest.fixture(scope="session")
def tracking_store(tmp_path_factory) -> str:
    """A fresh SQLite tracking store for the whole session, set as MLFLOW_TRACKING_URI."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def trained_arms(tracking_store) -> dict:
    """Both arms trained with `mlflow run` and registered with aliases a and b."""
    from training.arms import train_arms

    return train_arms()


# so much regularisation that every coefficient is 0: the model predicts the training mean
WORSE_ARM = {"alpha": 100.0, "l1_ratio": 1.0}


@pytest.fixture(scope="session")
def worse_arm(trained_arms):
    """A clearly worse third arm, registered as @worse (one more `mlflow run`)."""
    from training.tracking import run_arm

    return run_arm(alias="worse", **WORSE_ARM)


@pytest.fixture(scope="session")
def stack_manifest(tmp_path_factory) -> Path:
    """A private copy of serving/model-a-b.yaml (tests edit its traffic)."""
    path = tmp_path_factory.mktemp("manifest") / "model-a-b.yaml"
    shutil.copy(MANIFEST, path)
    return path


@pytest.fixture(scope="session")
def stack(trained_arms, stack_manifest, tmp_path_factory):
    """The real local stack on free loopback ports, stopped (by pid) at the end of the session."""
    from serving.local import LocalStack

    state_dir = tmp_path_factory.mktemp("stack")
    running = LocalStack.up(stack_manifest, port=0, state_dir=state_dir, timeout=240)
    yield running
    running.down()
