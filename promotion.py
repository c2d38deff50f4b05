"""Promote the A/B test's winner - only when the verdict says there is one - and roll it back.

    python promotion.py promote --log runs/feedback-arm-....csv [--manifest serving/model-a-b.yaml]
    python promotion.py rollback [--manifest serving/model-a-b.yaml]

``promote`` recomputes the verdict from the per-request log (``analysis.verdict``). When it is
significant it (1) moves the registry alias ``champion`` to the model version the winning
predictor serves, (2) writes traffic 100/0 into the SeldonDeployment (comments kept,
``serving.deployment.set_traffic``) and (3) has a local stack running from that manifest apply it
at once (its gateway also notices the edit by itself; on a cluster, ``kubectl apply -f`` the
manifest). When it is not significant it says so, and how many more requests the test needs,
and changes nothing.

Every promotion is recorded (the alias's previous target and the previous split) in a JSON file,
by default ``runs/promotions.json``, so ``rollback`` can restore exactly what was there: the
previous ``champion`` version, or no ``champion`` at all, and the previous split. Promotions
stack: each ``rollback`` undoes the latest one for that manifest.

Exit status of the CLI: 0 done, 3 no decision (nothing changed), 1 error (nothing changed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import analysis
from serving import deployment as sdep

REPO = Path(__file__).resolve().parent
DEFAULT_MANIFEST = REPO / "serving" / "model-a-b.yaml"
DEFAULT_RECORD = REPO / "runs" / "promotions.json"
CHAMPION = "champion"


class PromotionError(RuntimeError):
    """Promotion or rollback cannot proceed; the message says why and changed nothing."""


@dataclass
class Outcome:
    changed: bool
    message: str
    verdict: analysis.Verdict | None = None
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

    from training.tracking import tracking_uri

    return MlflowClient(tracking_uri())


def model_version(model_uri: str) -> tuple[str, str]:
    """(registered model name, version) that a ``models:/name@alias`` or ``models:/name/N`` URI serves now."""
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        raise PromotionError(
            f"modelUri {model_uri!r} is not a registry model (models:/<name>@<alias> or models:/<name>/<version>): "
            "there is no version to make champion"
        )
    rest = model_uri[len("models:/") :]
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, str(_client().get_model_version_by_alias(name, alias).version)
        name, _, number = rest.partition("/")
        return name, str(_client().get_model_version(name, number).version)
    except MlflowException as e:
        raise PromotionError(
            f"modelUri {model_uri}: not found in the registry ({e.message.splitlines()[0]})"
        ) from e


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


def history(manifest: str | Path = DEFAULT_MANIFEST, record: str | Path = DEFAULT_RECORD) -> list[dict]:
    """The recorded promotions of ``manifest``, oldest first."""
    return _read_record(Path(record)).get(str(Path(manifest).resolve()), [])


# ------------------------------------------------------------------------------ stack
def apply_locally(manifest: Path, state_dir: str | Path | None) -> dict | None:
    """Have a local stack serving ``manifest`` apply it now; None when no such stack runs."""
    from serving.local import DEFAULT_STATE_DIR, LocalStack

    stack = LocalStack(state_dir or DEFAULT_STATE_DIR)
    if not stack.running() or stack.state.get("manifest") != str(manifest.resolve()):
        return None
    return stack.reload()


# ------------------------------------------------------------------------------ promote / rollback
def promote(
    log,
    manifest: str | Path = DEFAULT_MANIFEST,
    record: str | Path = DEFAULT_RECORD,
    state_dir: str | Path | None = None,
    alpha: float = 0.05,
) -> Outcome:
    """Make the winner champion and give it all the traffic - only if the verdict is significant."""
    manifest, record = Path(manifest), Path(record)
    result = analysis.verdict(log, alpha=alpha)
    if not result.significant:
        return Outcome(False, f"nothing changed - {result.sentence}", result)

    deployment = sdep.load(manifest)
    names = [p.name for p in deployment.predictors]
    strangers = [arm for arm in (result.first, result.second) if arm not in names]
    if strangers:
        raise PromotionError(
            f"the log's arms {strangers} are not predictors of {manifest} ({names}): wrong log or manifest?"
        )
    winner = deployment.predictor(result.winner)
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
        old_split = sdep.set_traffic(manifest, split)
    except Exception:
        _point_champion(name, previous)  # leave nothing half done
        raise
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "log": str(log) if isinstance(log, (str, Path)) else "<DataFrame>",
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
    manifest: str | Path = DEFAULT_MANIFEST,
    record: str | Path = DEFAULT_RECORD,
    state_dir: str | Path | None = None,
    force: bool = False,
) -> Outcome:
    """Undo the latest promotion of ``manifest``: the alias's previous target and the previous split.

    Refuses (changing nothing) when the alias or the split are no longer what that promotion left,
    since restoring would silently undo someone's later change; ``force`` restores anyway.
    """
    manifest, record = Path(manifest), Path(record)
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

    sdep.set_traffic(manifest, entry["previous_split"])
    _point_champion(entry["model"], entry["previous_version"])
    entries.pop()
    if not entries:
        del document[key]
    _write_record(record, document)
    applied = apply_locally(manifest, state_dir)
    message = (
        f"rolled back: {entry['model']}@{CHAMPION} -> {entry['previous_version'] or 'removed'} "
        f"(was {entry['version']}); traffic {_split(entry['split'])} -> {_split(entry['previous_split'])} in {manifest}"
        + (" (the local gateway applied it)" if applied else "")
    )
    return Outcome(True, message, None, entry, applied)


def _split(split: dict) -> str:
    return "/".join(str(v) for v in split.values()) + " (" + ", ".join(split) + ")"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("promote", "rollback"):
        sub = commands.add_parser(command)
        sub.add_argument(
            "--manifest",
            default=str(DEFAULT_MANIFEST),
            help="the SeldonDeployment YAML (default %(default)s)",
        )
        sub.add_argument(
            "--record",
            default=str(DEFAULT_RECORD),
            help="where promotions are recorded (default %(default)s)",
        )
        sub.add_argument("--state-dir", help="the local stack's state folder (default .stack)")
        if command == "promote":
            sub.add_argument("--log", required=True, help="the feedback log (CSV) written by feedback.py")
            sub.add_argument(
                "--alpha", type=float, default=0.05, help="significance level (default %(default)s)"
            )
        else:
            sub.add_argument(
                "--force", action="store_true", help="restore even if alias or split changed since"
            )
    args = parser.parse_args(argv)
    from training.tracking import use_local_store

    use_local_store()
    try:
        if args.command == "promote":
            outcome = promote(args.log, args.manifest, args.record, args.state_dir, args.alpha)
        else:
            outcome = rollback(args.manifest, args.record, args.state_dir, args.force)
    except (PromotionError, analysis.LogError, sdep.DeploymentError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(outcome.message)
    return 0 if outcome.changed or args.command == "rollback" else 3


if __name__ == "__main__":
    sys.exit(main())
