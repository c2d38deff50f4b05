"""experiment.promotion on a stack of its own: model-a (@a) against model-b serving the mean-predicting
model (@worse), the real MLflow registry of the session and the real gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import requests

import experiment
import feedback
from experiment import promotion
from experiment.log import REPO
from serving import deployment as sdep
from serving import manifest as manifest_yaml
from serving.manifest import set_traffic
from tests.traffic import send_many

MODEL = "wines-classifier"


def history(manifest, record) -> list[dict]:
    """The recorded promotions of ``manifest``, oldest first."""
    try:
        return json.loads(Path(record).read_text()).get(str(Path(manifest).resolve()), [])
    except FileNotFoundError:
        return []


def test_promotion_refuses_to_edit_the_committed_manifest(tmp_path):
    for command in (
        lambda m: promotion.promote(tmp_path / "never-read.csv", m, tmp_path / "p.json"),
        lambda m: promotion.rollback(m, tmp_path / "p.json"),
    ):
        for committed in (REPO / "serving" / "model-a-b.yaml", "serving/../serving/model-a-b.yaml"):
            with pytest.raises(promotion.PromotionError, match="committed file of this repository"):
                command(committed)
    assert not (tmp_path / "p.json").exists()


def test_without_a_stack_the_working_copy_is_made_from_the_committed_manifest(tmp_path, monkeypatch):
    copy = tmp_path / "runs" / "model-a-b.yaml"
    monkeypatch.setattr(promotion, "WORKING_COPY", copy)  # not the reader's runs/
    assert promotion.working_manifest(state_dir=tmp_path / "no-stack") == copy
    assert copy.read_bytes() == (REPO / "serving" / "model-a-b.yaml").read_bytes()
    set_traffic(copy, {"model-a": 100, "model-b": 0})
    assert promotion.working_manifest(state_dir=tmp_path / "no-stack") == copy  # kept, not copied again
    assert sdep.load(copy).traffic == {"model-a": 100, "model-b": 0}


@pytest.fixture(scope="module")
def duo(worse_arm, tmp_path_factory):
    """The repository's manifest with model-b pointed at @worse (comments and layout kept); yields the
    stack and the working copy it serves."""
    from serving.local import LocalStack

    folder = tmp_path_factory.mktemp("duo")
    source = folder / "model-a-b.yaml"
    document = manifest_yaml.load(REPO / "serving" / "model-a-b.yaml")
    document["spec"]["predictors"][1]["graph"]["modelUri"] = f"models:/{MODEL}@worse"
    manifest_yaml.write(document, source)
    running = LocalStack.up(source, port=0, state_dir=folder / "stack", timeout=300)
    yield running, running.manifest_path
    running.down()


@pytest.fixture(scope="module")
def decisive_log(duo, tmp_path_factory):
    """Every hold-out row replayed twice at 50/50: ~1,960 requests per arm, which gives the Welch
    test a power above 99% for these two models (checked in test_verdict)."""
    stack, _ = duo
    folder = tmp_path_factory.mktemp("logs")
    endpoints = feedback.Endpoints.local(stack.state_dir)
    runs = [feedback.replay(endpoints, log_path=folder / f"pass-{i}.csv", progress=False) for i in (1, 2)]
    path = folder / "decisive.csv"
    pd.concat([r.log for r in runs], ignore_index=True).to_csv(path, index=False)
    verdict = experiment.verdict(path)
    assert verdict.winner == "model-a", f"the precondition of these tests failed: {verdict.sentence}"
    return path


@pytest.fixture
def registry_clean(duo):
    """No champion before a test; none left behind after it, whatever happened."""
    promotion._point_champion(MODEL, None)
    yield
    promotion._point_champion(MODEL, None)


def gateway_traffic(stack) -> dict:
    return requests.get(f"http://{stack.gateway_endpoint}/admin/status", timeout=5).json()["traffic"]


def served_by(stack, n=200) -> Counter:
    results = send_many(f"{stack.ingress_url}/predictions", n, concurrency=8)
    assert {r.status for r in results} == {200}
    return Counter(r.arm for r in results)


def version_of(alias: str) -> str:
    from training.tracking import version_for_alias

    return str(version_for_alias(alias).version)


@pytest.mark.stack
def test_no_decision_changes_nothing_and_says_how_many_requests_are_missing(
    duo, decisive_log, registry_clean, tmp_path, capsys
):
    stack, manifest = duo
    # two arms with the same model's outcomes (one request fewer): nothing to decide
    a = pd.read_csv(decisive_log).query("arm == 'model-a'")
    twin = a.assign(arm="model-b", feedback_arm="model-b").drop(index=a["reward"].idxmax())
    log = tmp_path / "same.csv"
    pd.concat([a, twin]).to_csv(log, index=False)
    before, record = manifest.read_bytes(), tmp_path / "promotions.json"

    outcome = promotion.promote(log, manifest, record, stack.state_dir)
    assert not outcome.promoted and not outcome.changed
    assert outcome.message.startswith("nothing changed - no decision")
    assert f"{outcome.verdict.required_n:,.0f} requests per arm" in outcome.message
    assert "more than the smaller arm had" in outcome.message
    assert promotion.champion(MODEL) is None and manifest.read_bytes() == before and not record.exists()
    assert gateway_traffic(stack) == {"model-a": 50, "model-b": 50}

    code = promotion_main(
        ["promote", "--log", str(log), "--record", str(record), "--state-dir", str(stack.state_dir)]
    )
    assert code == 3 and "nothing changed" in capsys.readouterr().out
    assert promotion.champion(MODEL) is None and manifest.read_bytes() == before and not record.exists()


def promotion_main(argv) -> int:
    from experiment.__main__ import main

    return main(argv)


@pytest.mark.stack
def test_promotion_moves_alias_and_split_the_gateway_serves_100_0_and_rollback_restores_both(
    duo, decisive_log, registry_clean, tmp_path
):
    stack, manifest = duo
    before, record = manifest.read_bytes(), tmp_path / "promotions.json"

    # no manifest named: the running stack's working copy
    outcome = promotion.promote(decisive_log, record=record, state_dir=stack.state_dir)
    assert outcome.promoted, outcome.message
    assert promotion.champion(MODEL) == version_of("a")
    assert sdep.load(manifest).traffic == {"model-a": 100, "model-b": 0}
    assert outcome.applied["traffic"] == gateway_traffic(stack) == {"model-a": 100, "model-b": 0}
    assert served_by(stack) == Counter({"model-a": 200})
    [entry] = history(manifest, record)
    assert entry["previous_version"] is None and entry["previous_split"] == {"model-a": 50, "model-b": 50}
    assert entry["log"] == [str(decisive_log.resolve())]  # the file, not "<DataFrame>"

    undone = promotion.rollback(record=record, state_dir=stack.state_dir)
    assert undone.changed and not undone.promoted
    assert promotion.champion(MODEL) is None  # there was none before
    assert manifest.read_bytes() == before  # the very same file, comments and all
    assert gateway_traffic(stack) == {"model-a": 50, "model-b": 50}
    arms = served_by(stack)
    assert arms["model-a"] > 50 and arms["model-b"] > 50, arms  # P(fail) < 1e-12 at 50/50
    assert history(manifest, record) == []
    with pytest.raises(promotion.PromotionError, match="nothing to roll back"):
        promotion.rollback(manifest, record, stack.state_dir)


@pytest.mark.stack
def test_rollback_restores_a_previous_champion_and_refuses_to_clobber_a_later_change(
    duo, decisive_log, registry_clean, tmp_path
):
    stack, manifest = duo
    before, record = manifest.read_bytes(), tmp_path / "promotions.json"
    promotion._point_champion(MODEL, version_of("worse"))  # yesterday's champion

    assert promotion.promote(decisive_log, manifest, record, stack.state_dir).promoted
    assert promotion.champion(MODEL) == version_of("a")
    set_traffic(manifest, {"model-a": 90, "model-b": 10})  # someone edits the split by hand

    with pytest.raises(promotion.PromotionError, match=r"traffic is 90/10"):
        promotion.rollback(manifest, record, stack.state_dir)
    assert promotion.champion(MODEL) == version_of("a") and sdep.load(manifest).traffic == {
        "model-a": 90,
        "model-b": 10,
    }

    promotion.rollback(manifest, record, stack.state_dir, force=True)
    assert promotion.champion(MODEL) == version_of("worse")
    assert manifest.read_bytes() == before
    assert gateway_traffic(stack) == {"model-a": 50, "model-b": 50}


@pytest.mark.stack
def test_rollback_that_cannot_write_the_split_leaves_the_alias_as_it_was(
    duo, decisive_log, registry_clean, tmp_path
):
    stack, manifest = duo
    record = tmp_path / "promotions.json"
    assert promotion.promote(decisive_log, manifest, record, stack.state_dir).promoted
    promoted = manifest.read_bytes()
    # a record whose previous split the manifest cannot take (a predictor it does not have)
    document = json.loads(record.read_text())
    document[str(manifest.resolve())][-1]["previous_split"] = {"model-a": 50, "model-x": 50}
    record.write_text(json.dumps(document))

    with pytest.raises(sdep.DeploymentError, match="model-x"):
        promotion.rollback(manifest, record, stack.state_dir)
    assert promotion.champion(MODEL) == version_of("a")  # restored to what the promotion set
    assert manifest.read_bytes() == promoted and len(history(manifest, record)) == 1
    set_traffic(manifest, {"model-a": 50, "model-b": 50})
    stack.reload()


@pytest.mark.stack
def test_promotion_refuses_a_log_whose_arms_the_manifest_does_not_have(
    duo, decisive_log, registry_clean, tmp_path
):
    stack, manifest = duo
    log = pd.read_csv(decisive_log).replace({"model-a": "model-x", "model-b": "model-y"})
    before = manifest.read_bytes()
    with pytest.raises(promotion.PromotionError, match=r"\['model-x', 'model-y'\] are not predictors"):
        promotion.promote(log, manifest, tmp_path / "promotions.json", stack.state_dir)
    assert promotion.champion(MODEL) is None and manifest.read_bytes() == before


@pytest.mark.stack
def test_cli_promote_and_rollback(duo, decisive_log, registry_clean, tmp_path, capsys):
    stack, manifest = duo
    before = manifest.read_bytes()
    common = ["--record", str(tmp_path / "promotions.json"), "--state-dir", str(stack.state_dir)]
    # the decisive log as two files, given as a glob: one experiment
    log = pd.read_csv(decisive_log)
    log.iloc[: len(log) // 2].to_csv(tmp_path / "feedback-arm-1.csv", index=False)
    log.iloc[len(log) // 2 :].to_csv(tmp_path / "feedback-arm-2.csv", index=False)

    # the real command line once, as a reader types it ...
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiment",
            "promote",
            "--log",
            str(tmp_path / "feedback-arm-*.csv"),
            *common,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("promoted model-a"), done.stdout + done.stderr
    assert str(manifest) in done.stdout  # the stack's working copy, named
    assert gateway_traffic(stack) == {"model-a": 100, "model-b": 0} and promotion.champion(
        MODEL
    ) == version_of("a")
    [entry] = history(manifest, tmp_path / "promotions.json")
    assert entry["log"] == [str((tmp_path / f"feedback-arm-{i}.csv").resolve()) for i in (1, 2)]
    # ... then its entry point in-process (each interpreter start imports MLflow: seconds)
    assert promotion_main(["rollback", *common]) == 0 and capsys.readouterr().out.startswith("rolled back")
    assert gateway_traffic(stack) == {"model-a": 50, "model-b": 50} and promotion.champion(MODEL) is None
    assert manifest.read_bytes() == before
    assert promotion_main(["rollback", *common]) == 1 and "nothing to roll back" in capsys.readouterr().err
    # the committed manifest is refused with the reason, and changed nothing
    assert promotion_main(["rollback", "--manifest", "serving/model-a-b.yaml", *common]) == 1
    assert "committed file of this repository" in capsys.readouterr().err
