"""Promote the A/B test's winner - only when the verdict says there is one - and roll it back.

    python -m experiment promote [--log LOG ...] [--manifest M]
    python -m experiment rollback [--manifest M]

``promote`` recomputes the verdict from the per-request log(s) (``experiment.verdict``). When it
is significant it (1) moves the registry alias ``champion`` to the model version the winning
predictor serves, (2) writes traffic 100/0 into the SeldonDeployment (comments kept,
``serving.manifest.set_traffic``) and (3) has a local stack serving that manifest apply it at
once (its gateway also notices the edit by itself; on a cluster, ``kubectl apply -f`` the
manifest). When it is not significant it says so, and how many more requests the test needs,
and changes nothing.

The manifest it edits is a working copy, never the committed ``serving/model-a-b.yaml``: by
default the one the running local stack serves (``LocalStack.manifest_path``), or
``runs/model-a-b.yaml`` when no stack runs (copied from the committed file on first use).

Every promotion is recorded (the log files, the alias's previous target and the previous split)
in a JSON file, by default ``runs/promotions.json``, so ``rollback`` can restore exactly what was
there: the previous ``champion`` version, or no ``champion`` at all, and the previous split.
Promotions stack: each ``rollback`` undoes the latest one for that manifest.

Exit status of the CLI: 0 done, 3 no decision (nothing changed), 1 error (nothing changed).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from experiment.log import REPO, RUNS, describe
from experiment.verdict import Verdict, verdict
from serving import deployment as sdep
from serving.manifest import set_traffic
from training.tracking import ModelNotFound, registered_version, tracking_uri

COMMITTED = REPO / "serving"
TEMPLATE = COMMITTED / "model-a-b.yaml"
WORKING_COPY = RUNS / "model-a-b.yaml"
DEFAULT_RECORD = RUNS / "promotions.json"
CHAMPION = "champion"


class PromotionError(RuntimeError):
    """Promotion or rollback cannot proceed; the message says why and changed nothing."""


@dataclass
class Outcome:
    changed: bool
    message: str
    verdict: Verdict | None = None
    entry: dict | None = None  # what was recorded (promote) or restored (rollback)
    applied: dict | None = None  # the local gateway's answer, when a stack was running

    @property
    def promoted(self) -> bool:
        """True when ``promote`` made a promotion (False for "no decision" and for rollbacks)."""
        return self.changed and self.verdict is not None

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------------------ registry
def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def model_version(model_uri: str) -> tuple[str, str]:
    """(registered model name, version) that a ``models:/name@alias`` or ``models:/name/N`` URI serves now."""
    try:
        found = registered_version(model_uri)
    except ModelNotFound as e:
        raise PromotionError(f"modelUri {e}: there is no version to make {CHAMPION}") from e
    return found.name, str(found.version)


def champion(name: str) -> str | None:
    """The version the ``champion`` alias points at, or None."""
    version = dict(_client().get_registered_model(name).aliases).get(CHAMPION)
    return None if version is None else str(version)  # the registry answers with an int


def _point_champion(name: str, version: str | None) -> None:
    if version is None:
        if champion(name) is not None:
            _client().delete_registered_model_alias(name, CHAMPION)
    else:
        _client().set_registered_model_alias(name, CHAMPION, str(version))


# ------------------------------------------------------------------------------ manifest
def working_manifest(manifest: str | Path | None = None, state_dir: str | Path | None = None) -> Path:
    """The manifest promotion edits: ``manifest`` if given, else the running local stack's working
    copy, else ``runs/model-a-b.yaml`` (copied from ``serving/model-a-b.yaml`` on first use).

    Refuses a manifest inside the repository's ``serving/`` folder: a promotion edits its file,
    and the committed manifest must stay the 50/50 the next run starts from.
    """
    from serving.local import DEFAULT_STATE_DIR, LocalStack

    if manifest is None:
        stack = LocalStack(state_dir or DEFAULT_STATE_DIR)
        if stack.running():
            manifest = stack.manifest_path
        else:
            manifest = WORKING_COPY
            if not manifest.exists():
                manifest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(TEMPLATE, manifest)
    manifest = Path(manifest)
    if manifest.resolve().is_relative_to(COMMITTED.resolve()):
        raise PromotionError(
            f"{manifest} is a committed file of this repository; promotion edits a working copy "
            f"instead: leave out --manifest (the running stack's copy, or {WORKING_COPY.relative_to(REPO)}), "
            f"or pass a copy (cp {manifest} runs/)"
        )
    return manifest


def apply_locally(manifest: Path, state_dir: str | Path | None) -> dict | None:
    """Have a local stack serving ``manifest`` apply it now; None when no such stack runs."""
    from serving.local import DEFAULT_STATE_DIR, LocalStack

    stack = LocalStack(state_dir or DEFAULT_STATE_DIR)
    if not stack.running() or stack.manifest_path.resolve() != manifest.resolve():
        return None
    return stack.reload()


# ------------------------------------------------------------------------------ record
def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise PromotionError(f"{path}: the promotion record is not valid JSON ({e}); fix or remove it") from e


def _write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: an interrupted write never loses the history


# ------------------------------------------------------------------------------ promote / rollback
def promote(
    log,
    manifest: str | Path | None = None,
    record: str | Path | None = None,
    state_dir: str | Path | None = None,
    alpha: float = 0.05,
    decision=None,
) -> Outcome:
    """Make the winner champion and give it all the traffic - only if the experiment says so.

    ``log``: a DataFrame, a CSV path, several paths or a glob (one experiment, pooled).
    ``manifest``: see ``working_manifest``; ``record``: default ``runs/promotions.json``.
    ``decision``: a monitored experiment (``experiment.run_monitored``): its gate decides
    (``guardrails.gate``: a sound split, every guardrail passed, the sequential test's winner).
    Without it, the Welch verdict on the log decides, and a sample ratio mismatch against the
    manifest's split or a breached guardrail (experiment/guardrails.py) blocks it.
    """
    manifest = working_manifest(manifest, state_dir)
    record = Path(record or DEFAULT_RECORD)
    deployment = sdep.load(manifest)
    names = [p.name for p in deployment.predictors]
    if decision is not None:  # the monitored experiment: its gate, with every reason it may not
        result, arms, gate = decision, [decision.control, *decision.tests], decision.gate
        if not gate.allowed:
            return Outcome(False, f"nothing changed - {gate.sentence}", result)
        winner_arm, audit = gate.promote, decision.record() | {"gate_record": gate.record}
    else:
        result = verdict(log, alpha=alpha)
        if not result.significant:
            return Outcome(False, f"nothing changed - {result.sentence}", result)
        arms, winner_arm = [result.first, result.second], result.winner
        blocked, audit = _log_checks(log, deployment, result)
        if blocked:
            return Outcome(False, "nothing changed - no promotion: " + "; ".join(blocked), result)
    strangers = [arm for arm in arms if arm not in names]
    if strangers:
        raise PromotionError(
            f"the log's arms {strangers} are not predictors of {manifest} ({names}): wrong log or manifest?"
        )
    winner = deployment.predictor(winner_arm)
    name, version = model_version(winner.model_uri)
    previous = champion(name)
    split = {p: 100 if p == winner.name else 0 for p in names}
    if previous == version and deployment.traffic == split:
        return Outcome(
            False,
            f"nothing changed - {winner.name} (version {version}) is already champion with all the traffic. "
            f"{result.sentence}",
            result,
        )

    _point_champion(name, version)
    try:
        old_split = set_traffic(manifest, split)
    except Exception:
        _point_champion(name, previous)  # leave nothing half done
        raise
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log": describe(log),
        "verdict": result.sentence,
        "manifest": str(manifest.resolve()),
        "model": name,
        "alias": CHAMPION,
        "winner": winner.name,
        "model_uri": winner.model_uri,
        "version": version,
        "previous_version": previous,
        "split": split,
        "previous_split": old_split,
        "audit": audit,  # the test, n per arm, estimate, interval, p/e-value, SRM and guardrails
    }
    document = _read_record(record)
    document.setdefault(entry["manifest"], []).append(entry)
    _write_record(record, document)
    applied = apply_locally(manifest, state_dir)
    where = (
        "the local gateway applied it"
        if applied
        else "no local stack serves it: on a cluster, `kubectl apply -f` it"
    )
    message = (
        f"promoted {winner.name}: {name}@{CHAMPION} -> version {version} (was {previous or 'unset'}); "
        f"traffic {_split(old_split)} -> {_split(split)} in {manifest} ({where}). {result.sentence}"
    )
    return Outcome(True, message, result, entry, applied)


def rollback(
    manifest: str | Path | None = None,
    record: str | Path | None = None,
    state_dir: str | Path | None = None,
    force: bool = False,
) -> Outcome:
    """Undo the latest promotion of ``manifest``: the alias's previous target and the previous split.

    Refuses (changing nothing) when the alias or the split are no longer what that promotion left,
    since restoring would silently undo someone's later change; ``force`` restores anyway.
    """
    manifest = working_manifest(manifest, state_dir)
    record = Path(record or DEFAULT_RECORD)
    document = _read_record(record)
    key = str(manifest.resolve())
    entries = document.get(key, [])
    if not entries:
        raise PromotionError(f"no promotion of {manifest} is recorded in {record}: nothing to roll back")
    entry = entries[-1]
    current_version = champion(entry["model"])
    current_split = sdep.load(manifest).traffic
    drift = []
    if current_version != entry["version"]:
        drift.append(
            f"{entry['model']}@{CHAMPION} is version {current_version}, the promotion set {entry['version']}"
        )
    if current_split != entry["split"]:
        drift.append(f"the traffic is {_split(current_split)}, the promotion set {_split(entry['split'])}")
    if drift and not force:
        raise PromotionError(
            "changed since the promotion, not rolling back (use --force to restore anyway): "
            + "; ".join(drift)
        )

    _point_champion(entry["model"], entry["previous_version"])
    try:
        set_traffic(manifest, entry["previous_split"])
    except Exception:
        _point_champion(entry["model"], current_version)  # leave nothing half done
        raise
    entries.pop()
    if not entries:
        del document[key]
    _write_record(record, document)
    applied = apply_locally(manifest, state_dir)
    message = (
        f"rolled back: {entry['model']}@{CHAMPION} -> {entry['previous_version'] or 'removed'} "
        f"(was {entry['version']}); traffic {_split(entry['split'])} -> {_split(entry['previous_split'])} "
        f"in {manifest}" + (" (the local gateway applied it)" if applied else "")
    )
    return Outcome(True, message, None, entry, applied)


def _log_checks(log, deployment, result: Verdict) -> tuple[list[str], dict]:
    """(what blocks the verdict's promotion, the audit record): SRM against the split, guardrails."""
    from experiment import guardrails, srm
    from experiment.log import read_log, served_rows

    rows = served_rows(log)
    test = {
        "test": "Welch t-test, one look at the end",
        "n": {result.first: result.n[0], result.second: result.n[1]},
        "difference": result.difference,
        "interval": list(result.difference_ci),
        "p_value": result.p_value,
        "alpha": result.alpha,
    }
    audit, blocked = {"test": test}, []
    split = {a: float(deployment.traffic.get(a, 0)) for a in (result.first, result.second)}
    if all(w > 0 for w in split.values()):  # after a promotion the split is 100/0: nothing to expect
        check = srm.srm(rows[rows["arm"].isin(split)], split)
        audit["srm"] = check.record()
        if check.mismatch:
            blocked.append(check.sentence)
    else:
        audit["srm"] = f"not checked: the manifest's split is now {deployment.traffic}"
    full = read_log(log)
    if {"predict_ms", "predict_status"} <= set(full.columns):
        results = guardrails.from_log(full, result.second, result.first)
        audit["guardrails"] = [r.record() for r in results]
        blocked += [f"guardrail breached: {r.sentence}" for r in guardrails.breached(results)]
    return blocked, audit


def _split(split: dict) -> str:
    return "/".join(str(v) for v in split.values()) + " (" + ", ".join(split) + ")"
