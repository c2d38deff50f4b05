"""The MLproject, run for real with `mlflow run`, against a temporary SQLite tracking store."""

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from training import tracking
from training.arms import ARMS
from training.data import FEATURES, load_wine_quality, split_holdout

# every test here starts `mlflow run` (a few seconds each): not for the edit-test loop
pytestmark = pytest.mark.slow


def venv_env(**extra) -> dict:
    """The environment a reader has with the virtualenv activated: its python first on PATH."""
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, **extra}


def mlflow_run(tracking_store, *params):
    """`mlflow run training ...` exactly as the README tells a reader to type it."""
    return subprocess.run(
        ["mlflow", "run", "training", *params, "--env-manager", "local"],
        cwd=tracking.REPO,
        capture_output=True,
        text=True,
        env=venv_env(MLFLOW_TRACKING_URI=tracking_store),
    )


def run_metrics(version) -> dict:
    return MlflowClient().get_run(version.run_id).data.metrics


def test_both_arms_are_registered_with_their_aliases(trained_arms):
    assert set(trained_arms) == set(ARMS)
    registered = tracking.aliases()  # other tests may add aliases of their own (@worse)
    assert {alias: registered.get(alias) for alias in ARMS} == {
        alias: int(v.version) for alias, v in trained_arms.items()
    }
    for alias, version in trained_arms.items():
        params = MlflowClient().get_run(version.run_id).data.params
        assert float(params["alpha"]) == ARMS[alias]["alpha"]
        assert float(params["l1_ratio"]) == ARMS[alias]["l1_ratio"]
        assert set(run_metrics(version)) >= {"rmse", "mae", "r2"}


def test_registered_model_predicts_on_a_named_dataframe(trained_arms):
    _, holdout = split_holdout(load_wine_quality())
    model = mlflow.pyfunc.load_model(tracking.model_uri("a"))
    predictions = model.predict(holdout[FEATURES].head(5))
    assert len(predictions) == 5 and np.all(np.isfinite(predictions))
    assert model.metadata.get_input_schema().input_names() == FEATURES
    with pytest.raises(Exception, match="alcohol"):  # the signature is enforced
        model.predict(holdout[FEATURES].drop(columns="alcohol").head(5))


def test_different_alpha_gives_a_different_model(trained_arms):
    a, b = (mlflow.pyfunc.load_model(tracking.model_uri(alias)) for alias in ("a", "b"))
    _, holdout = split_holdout(load_wine_quality())
    rows = holdout[FEATURES].head(20)
    assert not np.allclose(a.predict(rows), b.predict(rows))
    assert run_metrics(trained_arms["a"])["rmse"] != run_metrics(trained_arms["b"])["rmse"]


def test_same_parameters_and_seed_give_identical_metrics(trained_arms):
    again = tracking.run_arm(alias="again", **ARMS["a"])
    assert again.version != trained_arms["a"].version  # a new version, not the old one
    assert run_metrics(again) == run_metrics(trained_arms["a"])


@pytest.mark.parametrize(
    "params, message",
    [
        (["-P", "alpha=-0.5"], "alpha must be a finite number >= 0, got -0.5"),
        (["-P", "alpha=0.1", "-P", "l1_ratio=1.5"], "l1_ratio must be between 0 and 1, got 1.5"),
    ],
)
def test_bad_parameters_end_with_a_clear_message(tracking_store, params, message):
    result = mlflow_run(tracking_store, *params)
    assert result.returncode != 0
    assert message in result.stderr
    assert "sklearn" not in result.stderr and "Traceback" not in result.stderr


def test_a_non_numeric_alpha_is_refused_by_the_mlproject(tracking_store):
    result = mlflow_run(tracking_store, "-P", "alpha=lots")
    assert result.returncode != 0
    assert "alpha" in result.stderr and "lots" in result.stderr


def test_training_refuses_a_corrupt_data_file(tracking_store, tmp_path):
    corrupt = tmp_path / "w.csv"
    corrupt.write_text('"fixed acidity";"quality"\n1;2\n')
    result = subprocess.run(
        ["python", "train.py", "--alpha", "0.1"],
        cwd=tracking.PROJECT_DIR,
        capture_output=True,
        text=True,
        env=venv_env(WINE_QUALITY_CSV=str(corrupt), MLFLOW_TRACKING_URI=tracking_store),
    )
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and "columns do not match" in result.stderr
    assert "Traceback" not in result.stderr
