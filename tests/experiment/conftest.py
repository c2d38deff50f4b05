"""For the experiment tests: real error populations, synthetic logs, replays, a stack of three arms."""

from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import pytest

import experiment
import feedback
from experiment.log import REPO
from serving import deployment as sdep
from serving import manifest as manifest_yaml
from serving.manifest import set_traffic
from tests.conftest import WORSE_ARM
from tests.traffic import send_many


@pytest.fixture(scope="session")
def populations() -> dict[str, np.ndarray]:
    """Hold-out errors (truth - prediction) of arm a's model and of the mean-predicting model.

    Fitted here with scikit-learn like train.py does: a finite population whose true mean reward
    and RMSE are known, to draw samples from.
    """
    from sklearn.linear_model import ElasticNet

    from training.arms import ARMS
    from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

    train, holdout = split_holdout(load_wine_quality(), seed=SEED)
    errors = {}
    for name, params in (("model-a", ARMS["a"]), ("model-worse", WORSE_ARM)):
        model = ElasticNet(alpha=params["alpha"], l1_ratio=params["l1_ratio"], random_state=SEED).fit(
            train[FEATURES], train[TARGET]
        )
        errors[name] = (holdout[TARGET] - model.predict(holdout[FEATURES])).to_numpy()
    return errors


def rewards_of(errors: np.ndarray) -> np.ndarray:
    return np.array([feedback.reward(e, 0.0) for e in errors])


def synthetic_log(samples: dict[str, np.ndarray], truth: float = 6.0) -> pd.DataFrame:
    """A feedback.py log in which arm ``name`` made the errors ``samples[name]``."""
    rows = []
    for arm, errors in samples.items():
        for e in errors:
            rows.append(
                {
                    "arm": arm,
                    "node": arm,
                    "truth": truth,
                    "prediction": truth - e,
                    "reward": feedback.reward(truth, truth - e),
                    "feedback_via": "arm",
                    "feedback_arm": arm,
                    "predict_status": 200,
                    "feedback_status": 200,
                    "attempts": 1,
                    "error": "",
                }
            )
    log = pd.DataFrame(rows, columns=feedback.LOG_COLUMNS)
    log["request_id"] = range(len(log))
    return log


def replay_window(stack, **options):
    """A replay bracketed by a fresh scrape before it (the baseline) and its end time after it."""
    since = experiment.wait_for_scrape(stack.prometheus_url)
    result = feedback.replay(feedback.Endpoints.local(stack.state_dir), progress=False, **options)
    return result, since, result.finished


def write_manifest(path, arms: list[tuple[str, str, int]]):
    """The repository's manifest with predictors (name, registry alias, traffic), style kept."""
    document = manifest_yaml.load(REPO / "serving" / "model-a-b.yaml")
    template = document["spec"]["predictors"][0]
    predictors = []
    for name, alias, traffic in arms:
        p = copy.deepcopy(template)
        p["name"], p["traffic"] = name, traffic
        p["graph"]["name"], p["graph"]["modelUri"] = name, f"models:/wines-classifier@{alias}"
        p["componentSpecs"][0]["spec"]["containers"][0]["name"] = name
        predictors.append(p)
    document["spec"]["predictors"] = predictors
    manifest_yaml.write(document, path)
    return path


@pytest.fixture(scope="package")
def trio(worse_arm, tmp_path_factory):
    """model-a (@a) and model-worse (@worse) at 50/50, and model-twin: a second copy of @a, idle.

    Yields the stack and the working copy of the manifest it serves (edit it, then reload).
    """
    from serving.local import LocalStack

    folder = tmp_path_factory.mktemp("trio")
    manifest = write_manifest(
        folder / "trio.yaml", [("model-a", "a", 50), ("model-worse", "worse", 50), ("model-twin", "a", 0)]
    )
    running = LocalStack.up(manifest, port=0, state_dir=folder / "stack", timeout=300)
    yield running, running.manifest_path
    running.down()


def set_split(stack, manifest, split):
    set_traffic(manifest, split)
    assert stack.reload()["traffic"] == split


@pytest.fixture(scope="package")
def replayed(stack, tmp_path_factory):
    """A replay through the shared stack, then malformed requests to model-a's own endpoint."""
    url = stack.prometheus_url
    start = time.time()
    result = feedback.replay(
        feedback.Endpoints.local(stack.state_dir),
        limit=300,
        progress=False,
        log_path=tmp_path_factory.mktemp("dashboard") / "replay.csv",
    )
    # Two bursts of malformed requests to model-a, a scrape apart: a counter series is born at its
    # first increment, and rate() cannot see the jump from "no series" to its first value.
    bad_url = stack.predictor_urls["model-a"] + "/api/v1.0/predictions"
    bad = send_many(bad_url, 1, body="{not json")
    experiment.wait_for_scrape(url)
    bad += send_many(bad_url, 5, body="{not json", concurrency=2)
    assert {r.status for r in bad} == {400}, [(r.status, r.info) for r in bad]
    # fresh good traffic on every arm, so the last rate window holds both kinds
    assert {r.status for r in send_many(f"{stack.ingress_url}/predictions", 40, concurrency=4)} == {200}
    end = experiment.wait_for_scrape(url)  # the last counts are in Prometheus
    return {
        "start": start,
        "end": end,
        "log": result.log,
        "arms": sorted(sdep.load(stack.manifest_path).traffic),
    }
