"""The replay engine ``feedback.py`` runs: hold-out rows through the ingress, each reward to its arm.

``replay()`` sends every hold-out row (``holdout_rows``) through a ``Replayer`` and writes the
per-request log (``LOG_COLUMNS``) that experiment/log.py reads; ``ReplayResult`` is what it returns.
A ``monitor`` (experiment/run_monitor.py) watches the rows as they complete and stops the replay
when the experiment decides. feedback.py is the command line, and defines the reward.

The messages are SeldonClient's (``serving.client``; tests/reliability checks the bodies are
identical), posted to its paths (``gateway="istio"``: the ingress; ``gateway="seldon"``: an arm's
endpoint). Only the transport differs: SeldonClient opens a connection per call and its protobuf
round trips cost ~3 ms of client CPU per row, which made the client the bottleneck (bench/README.md);
here one asyncio loop keeps a connection alive per endpoint per row in flight (``concurrency`` rows).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from serving import aio
from serving.client import Connections, NoAnswer, NotSent, feedback_message, first_value, prediction_request
from serving.endpoints import Endpoints
from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

REPO = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO / "runs"
# how long refused connections are retried: covers the local supervisor's restart of a killed
# gateway (about 2 s) with room for a busy machine; a stack that stays down fails the rows after it
DEFAULT_DEADLINE = 30.0
PUID_HEADER = "Seldon-Puid"  # the executor's request id header (seldon-core executor/api/rest)
MAY_HAVE_COUNTED = "it may have been counted, so it was not sent again"
# The per-request log. attempts: requests sent for the row, 2 (a prediction and a feedback) when none
# was retried. puid: the Seldon-Puid sent with the answered prediction (and with its feedback), the
# request id of its request-logger events: each executor makes its own unless the caller sends one,
# so without it a shadow's events could not be joined with the main arm's (experiment/paired.py).
# feedback_resent: times the feedback was sent again after it got no answer (counted once by puid).
LOG_COLUMNS = (
    "request_id arm node truth prediction reward predict_ms feedback_ms feedback_via feedback_arm "
    "predict_status feedback_status attempts error puid feedback_resent"
).split()
# a monitored replay (``replay(..., monitor=...)``) adds: the look (the row's place in the order rows
# completed, which is the order the monitor saw them) and the monitor's decision at that look
MONITOR_COLUMNS = ["look", "decision"]
AFTER_STOP = "after stop"  # a row that was in flight when the monitor stopped: logged, not looked at


@dataclass
class ReplayResult:
    log: pd.DataFrame
    seconds: float
    path: Path | None = None
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    started: float = 0.0  # wall-clock (Unix) times of the replay, e.g. for Prometheus range queries
    finished: float = 0.0
    # a monitored replay: the monitor's decision (``continue``: it ran out of rows), why, and its look
    decision: str | None = None
    reason: str = ""
    look: int | None = None

    @property
    def sent(self) -> int:
        return len(self.log)

    def per_arm(self) -> pd.Series:
        ok = self.log[self.log["feedback_status"] == 200]
        return ok.groupby("arm").size()

    def summary(self) -> str:
        ok = int((self.log["feedback_status"] == 200).sum())
        arms = ", ".join(f"{arm}: {n}" for arm, n in self.per_arm().items())
        pace = self.sent / max(self.seconds, 1e-9)
        text = (
            f"replayed {self.sent} hold-out rows in {self.seconds:.1f} s ({pace:.0f}/s); "
            f"feedback accepted {ok} ({arms}); failed {len(self.failures)}"
        )
        if self.decision is not None:
            where = f"stopped at look {self.look:,}" if self.look else "ran out of rows"
            text += f"; monitor: {self.decision} ({where}: {self.reason})"
        return text


# ------------------------------------------------------------------------------------ replay
class Replayer:
    """Replays rows: ``one`` row at a time on a shared ``Connections``.

    What is retried (each retry after a backoff of 50 ms doubling up to 1 s):

    - a connection that could not be opened (refused, unreachable): nothing was sent, so any
      request is safe to send again; retried while the endpoints have been unreachable for less
      than ``deadline`` seconds (the local supervisor restarts a killed gateway in about 2 s);
    - a prediction or feedback answered 503 (the gateway could not reach the arm, or the arm is not
      ready: nothing served it): retried while less than ``deadline`` seconds have passed since
      the row's first attempt (a killed model server is back and loaded in a few seconds);
    - a prediction that got another 5xx or no answer: predicting again changes no reward (at most
      ``retries`` times);
    - a feedback sent to the arm's own endpoint that got no answer (a reset, a timeout, a 504 from
      the gateway): it may have been counted, but it carries its prediction's request id
      (``Seldon-Puid``) and the model server counts an id once (serving/mlflow_server.py), so it is
      sent again (at most ``retries`` times, while less than ``deadline`` seconds have passed since
      the first; ``feedback_resent`` in the log).

    Through the ingress (``feedback_via="ingress"``) a resend could reach the other arm, which
    would count it too: there a feedback that got no answer is reported, never sent twice - a
    duplicate reward would bias that arm's mean.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        feedback_via: str = "arm",
        retries: int = 3,
        timeout: float = 30.0,
        deadline: float = DEFAULT_DEADLINE,
    ):
        if feedback_via not in ("arm", "ingress"):
            raise ValueError(f"feedback_via must be 'arm' or 'ingress', got {feedback_via!r}")
        if not deadline >= 0:
            raise ValueError(f"deadline must be a number of seconds >= 0, got {deadline!r}")
        self.endpoints = endpoints
        self.feedback_via = feedback_via
        self.retries = retries
        self.timeout = timeout
        self.deadline = deadline
        # an arm's own endpoint reaches the same model server every time: a resent feedback is
        # recognised there by its request id and counted once; the ingress may pick the other arm
        self.resends_unanswered = feedback_via == "arm"
        # SeldonClient(gateway="istio") posts to the ingress path; gateway="seldon" to /api/v1.0/...
        self.predict_url = endpoints.predictions_url
        self.ingress_feedback_url = endpoints.ingress_feedback_url
        self.arm_feedback_urls = {name: endpoints.feedback_url(name) for name in endpoints.predictors}

    async def _post(
        self, connections: Connections, url: str, body: dict, headers: dict | None = None
    ) -> tuple[int, dict | None, str]:
        """POST JSON; (status, parsed body or None, error text). Raises only when no answer came."""
        status, text = await connections.post(url, json.dumps(body).encode(), self.timeout, headers)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        error = "" if status == 200 else f"{status} {text[:200].decode(errors='replace')}".strip()
        return status, parsed if isinstance(parsed, dict) else None, error

    async def _again(self, connections: Connections, attempt: int, not_sent: bool) -> bool:
        """Wait before the next attempt; False when a request that was not sent has run out of time."""
        if not_sent and connections.unreachable_for() >= self.deadline:
            return False
        await asyncio.sleep(min(0.05 * 2 ** (attempt - 1), 1.0))
        return True

    async def one(
        self, connections: Connections, request_id: int, features: np.ndarray, truth: float
    ) -> dict:
        row = {
            "request_id": request_id,
            "truth": truth,
            "feedback_via": self.feedback_via,
            "attempts": 0,
            "error": "",
            "feedback_resent": 0,
        }
        request = prediction_request(features, FEATURES)
        # 1. predict through the ingress
        start = time.perf_counter()
        response, status, error, failed = None, None, "", 0
        while True:
            row["attempts"] += 1
            not_sent = False
            # a request id of its own per attempt: the row's is the answered one's
            row["puid"] = str(uuid.uuid4())
            try:
                status, response, error = await self._post(
                    connections, self.predict_url, request, {PUID_HEADER: row["puid"]}
                )
                if status == 200 and response is not None:
                    break
                error = f"predict: {error or 'the answer is not a JSON object'}"
                if status < 500 and status != 200:
                    break  # the request itself is wrong: sending it again gives the same answer
                failed += status != 503  # a 503 is retried until the deadline instead
            except NotSent as e:
                status, response, error, not_sent = None, None, f"predict: {e}", True
            except (TimeoutError, NoAnswer) as e:  # no answer; predicting again is harmless
                status, response, error = None, None, f"predict: {type(e).__name__}: {e}"
                failed += 1
            if (
                failed > self.retries
                or (status == 503 and time.perf_counter() - start >= self.deadline)
                or not await self._again(connections, row["attempts"], not_sent)
            ):
                break
        row["predict_ms"] = (time.perf_counter() - start) * 1000
        row["predict_status"] = status
        if status != 200 or response is None:
            row["error"] = error
            return row

        # 2. which arm answered, and what it said
        path = response.get("meta", {}).get("requestPath") or {}
        node = next(iter(path), "")
        row["node"] = node
        row["arm"] = self.endpoints.nodes.get(node, "")
        if not row["arm"]:
            row["error"] = f"response names no known graph node in meta.requestPath: {path}"
            return row
        try:
            row["prediction"] = first_value(response)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            row["error"] = f"the prediction holds no number: {type(e).__name__}: {e}"
            return row
        # 3. the reward
        from feedback import reward  # the one reward definition (feedback.py imports this module)

        row["reward"] = reward(truth, row["prediction"])
        # 4. feedback to the arm that served (or, to measure the flaw, through the ingress)
        url = self.arm_feedback_urls[row["arm"]] if self.feedback_via == "arm" else self.ingress_feedback_url
        body = feedback_message(request, response, row["reward"])
        # the prediction's request id: the model server counts a feedback with it once (so it can be
        # resent), and the request logger files the feedback with its request and response
        headers = {PUID_HEADER: row["puid"]}
        start, attempt, failed = time.perf_counter(), 0, 0
        while True:
            attempt += 1
            row["attempts"] += 1
            try:
                status, answer, error = await self._post(connections, url, body, headers)
            except NotSent as e:  # nothing left this machine: safe to send again
                row["feedback_status"], row["error"] = None, f"feedback: {e}"
                if await self._again(connections, attempt, not_sent=True):
                    continue
                break
            except (TimeoutError, NoAnswer) as e:  # sent, and may have been counted
                what = f"no answer within {self.timeout:g} s" if isinstance(e, TimeoutError) else str(e)
                status, error = None, what
            row["feedback_status"] = status
            if status == 200:
                row["error"] = ""
                served = (answer or {}).get("meta", {}).get("requestPath") or {}
                row["feedback_arm"] = self.endpoints.nodes.get(next(iter(served), ""), "")
                break
            row["error"] = f"feedback: {error}"
            failed += status != 503
            # 503: the arm could not be reached, nothing was counted: retry. No answer or a 504 may
            # have been counted: sent again only where the same model server gets it
            unanswered = status in (None, 504)
            if (
                not (status == 503 or (unanswered and self.resends_unanswered))
                or failed > self.retries
                or time.perf_counter() - start >= self.deadline
                or not await self._again(connections, attempt, False)
            ):
                row["error"] += f"; {MAY_HAVE_COUNTED}" if unanswered else ""
                break
            row["feedback_resent"] += unanswered
        row["feedback_ms"] = (time.perf_counter() - start) * 1000
        return row

    async def _replay(
        self,
        features: np.ndarray,
        truths: np.ndarray,
        ids: np.ndarray,
        concurrency: int,
        progress: bool,
        rate: float | None = None,
        monitor=None,
    ) -> list[dict]:
        semaphore = asyncio.Semaphore(concurrency)
        stopped = asyncio.Event()
        looks = 0
        bar = tqdm(total=len(ids), desc="replay", unit="req", disable=not progress)
        connections = Connections(concurrency)

        loop = asyncio.get_running_loop()
        begin = loop.time()

        async def bounded(i: int) -> dict | None:
            nonlocal looks
            if rate:  # production pace: row i starts at i / rate seconds, not as soon as it can
                delay = begin + i / rate - loop.time()
                if delay > 0:
                    try:  # a stop wakes every waiting row at once
                        await asyncio.wait_for(stopped.wait(), delay)
                    except TimeoutError:
                        pass
            if stopped.is_set():
                return None  # the monitor decided: rows not yet sent are not sent
            async with semaphore:
                if stopped.is_set():
                    return None
                row = await self.one(connections, int(ids[i]), features[i : i + 1], float(truths[i]))
            bar.update()
            if monitor is not None:
                looks += 1
                row["look"] = looks
                if stopped.is_set():
                    row["decision"] = AFTER_STOP
                else:  # the monitor sees rows in the order they complete; its add() is O(1)
                    row["decision"] = monitor.add(row)
                    if monitor.stopped:
                        stopped.set()
            return row

        try:
            # rows start in order; gather keeps the log in that order
            rows = await asyncio.gather(*(bounded(i) for i in range(len(ids))))
            return [row for row in rows if row is not None]
        finally:
            bar.close()
            await connections.close()

    def replay(
        self,
        rows: pd.DataFrame,
        concurrency: int = 8,
        progress: bool = True,
        rate: float | None = None,
        monitor=None,
    ) -> pd.DataFrame:
        features = rows[FEATURES].to_numpy(dtype="float64")
        truths = rows[TARGET].to_numpy(dtype="float64")
        ids = rows.index.to_numpy()
        # aio.run gives it a loop of its own, in a thread when a notebook's kernel already runs one
        results = aio.run(self._replay(features, truths, ids, concurrency, progress, rate, monitor))
        columns = LOG_COLUMNS + (MONITOR_COLUMNS if monitor is not None else [])
        return pd.DataFrame(results, columns=columns)


def holdout_rows(seed: int = SEED, limit: int | None = None) -> pd.DataFrame:
    """The hold-out rows of the training split for ``seed``, in a seeded random order."""
    _, holdout = split_holdout(load_wine_quality(), seed=seed)
    rows = holdout.sample(frac=1.0, random_state=seed)
    return rows.head(limit) if limit else rows


def replay(
    endpoints: Endpoints | None = None,
    limit: int | None = None,
    concurrency: int = 8,
    seed: int = SEED,
    feedback_via: str = "arm",
    log_path: str | Path | None = None,
    retries: int = 3,
    progress: bool = True,
    rate: float | None = None,
    deadline: float = DEFAULT_DEADLINE,
    monitor=None,
) -> ReplayResult:
    """Replay the hold-out rows; return the per-request log (also written as CSV).

    ``monitor``: watch the experiment while it runs and stop when it decides. Any object with
    ``add(row) -> decision`` (called with each completed row, in completion order), ``stopped``,
    ``reason`` and ``look``; ``experiment.run_monitor.RunMonitor`` is the sequential test with
    guardrails (``experiment.run_monitored`` builds it from a plan). Once it stops, rows not yet
    sent are not sent; rows in flight finish and are logged as ``after stop``. The log gains the
    columns ``look`` and ``decision``: the stopping look is the row whose decision is not
    ``continue``.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be a positive number of rows per second, got {rate}")
    endpoints = endpoints or Endpoints.local()
    rows = holdout_rows(seed, limit)
    started, start = time.time(), time.perf_counter()
    replayer = Replayer(endpoints, feedback_via, retries, deadline=deadline)
    log = replayer.replay(rows, concurrency, progress, rate, monitor)
    seconds, finished = time.perf_counter() - start, time.time()
    if log_path is None:
        RUNS_DIR.mkdir(exist_ok=True)
        log_path = RUNS_DIR / f"feedback-{feedback_via}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.to_csv(log_path, index=False)
    failures = log[log["feedback_status"] != 200]
    result = ReplayResult(
        log=log, seconds=seconds, path=log_path, failures=failures, started=started, finished=finished
    )
    if monitor is not None:
        result.decision, result.reason, result.look = monitor.decision, monitor.reason, monitor.look
    return result
