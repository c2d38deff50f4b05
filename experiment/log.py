"""The per-request log written by ``feedback.py``: reading it, and the rows each analysis uses.

One row per replayed request: the arm that served it, truth, prediction, reward, and where its
feedback went (``feedback_arm``, the arm whose model server counted it). A log can be a
DataFrame, a CSV path, several paths, or a glob such as ``runs/feedback-arm*.csv``; several
logs are one experiment, read as one table.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs"
# feedback.py's logs with feedback to each arm's own endpoint: the notebook's and the CLI's
ARM_LOGS = "feedback-arm*.csv"


class LogError(ValueError):
    """The per-request log cannot be analysed; the message says what is wrong with it."""


def log_paths(log: str | Path | Iterable[str | Path]) -> list[Path]:
    """The files a log argument names: a path, a glob pattern, or several of either, in order."""
    items = [log] if isinstance(log, (str, Path)) else list(log)
    if not items:
        raise LogError("no feedback log given")
    paths: list[Path] = []
    for item in items:
        if glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item)))
            if not matches:
                raise LogError(f"no feedback log matches {item}")
            paths += [Path(m) for m in matches]
        else:
            paths.append(Path(item))
    return paths


def newest_log(pattern: str = ARM_LOGS, folder: str | Path | None = None) -> Path:
    """The most recently written log matching ``pattern`` in ``folder`` (``runs/feedback-arm*.csv``)."""
    folder = RUNS if folder is None else folder
    found = [p for p in Path(folder).glob(pattern) if p.is_file()]
    if not found:
        raise LogError(f"no feedback log {Path(folder) / pattern}: replay first (python feedback.py)")
    return max(found, key=lambda p: p.stat().st_mtime)


def describe(log) -> str | list[str]:
    """What a log argument was, for a record: its file paths, or "in-memory DataFrame, N rows"."""
    if isinstance(log, pd.DataFrame):
        return f"in-memory DataFrame, {len(log)} rows"
    return [str(p.resolve()) for p in log_paths(log)]


def read_log(log) -> pd.DataFrame:
    """The log as one DataFrame: a DataFrame as given, or the CSV file(s) a path, glob or list names."""
    if isinstance(log, pd.DataFrame):
        return log
    if not isinstance(log, (str, Path, list, tuple)):
        raise LogError(f"expected a feedback log (DataFrame, CSV path(s) or glob), got {type(log).__name__}")
    frames = []
    for path in log_paths(log):
        try:
            frames.append(pd.read_csv(path))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise LogError(f"cannot read the feedback log {path}: {e}") from e
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _require(log: pd.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in log.columns]
    if missing:
        raise LogError(
            f"the feedback log has no {missing} column(s); is it a feedback.py log? "
            f"(columns: {list(log.columns)})"
        )


def served_rows(log) -> pd.DataFrame:
    """The rows an arm answered: a prediction came back, so truth, prediction and reward are known.

    A row whose *feedback* failed still measures its arm's model, so it stays in; a failed
    prediction measures nothing and is left out (feedback.py reports those).
    """
    log = read_log(log)
    _require(log, "arm", "truth", "prediction", "reward")
    rows = log
    if "predict_status" in log.columns:
        rows = rows[pd.to_numeric(rows["predict_status"], errors="coerce") == 200]
    rows = rows[rows["arm"].notna() & (rows["arm"].astype(str) != "")]
    values = rows[["truth", "prediction", "reward"]].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype="float64")).all(axis=1)
    if bad.any():
        ids = (
            rows.loc[bad, "request_id"].tolist()[:5]
            if "request_id" in rows.columns
            else rows.index[bad].tolist()[:5]
        )
        raise LogError(
            f"{int(bad.sum())} served rows lack a finite truth/prediction/reward (request ids {ids})"
        )
    rows = rows.copy()
    rows[["truth", "prediction", "reward"]] = values
    rows["arm"] = rows["arm"].astype(str)
    return rows


def accepted_feedback(log) -> pd.DataFrame:
    """Rows whose feedback a model server accepted (HTTP 200), with the arm that counted it."""
    log = read_log(log)
    _require(log, "arm", "reward", "feedback_status", "feedback_arm")
    rows = log[pd.to_numeric(log["feedback_status"], errors="coerce") == 200].copy()
    unnamed = rows["feedback_arm"].isna() | (rows["feedback_arm"].astype(str) == "")
    if unnamed.any():
        raise LogError(
            f"{int(unnamed.sum())} accepted feedback rows do not say which arm counted them (feedback_arm)"
        )
    rows["arm"] = rows["arm"].astype(str)
    rows["feedback_arm"] = rows["feedback_arm"].astype(str)
    return rows
