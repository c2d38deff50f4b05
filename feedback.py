"""Replay held-out traffic through the A/B test and send each reward to the arm that earned it.

    python feedback.py                        # local stack, every hold-out row, 8 at a time
    python feedback.py --limit 200 --feedback-via ingress     # the original example's flaw
    python feedback.py --monitor model-b      # plan, replay until the sequential test decides, decide

For each hold-out row (rows the models never trained on, from ``training.data.split_holdout``):

1. predict through the ingress (SeldonClient's message) - the traffic split picks the arm;
2. read which arm answered from the response's ``meta.requestPath`` (its graph node name);
3. compute a bounded reward from the true quality (see ``reward``);
4. send the feedback to *that arm's own endpoint* - the predictor's Service on a cluster, its
   port on the local stack. Feedback posted to the ingress instead is split at random by the
   same weighted route as predictions (Istio has no header override), so each arm's reward would
   mix both models: ``--feedback-via ingress`` reproduces that, to measure it;
5. write one line per request to a CSV log (request id, arm, truth, prediction, reward, ...)
   for the analysis. A failed request is retried when that is safe, otherwise counted and
   reported - never dropped silently.

The messages are SeldonClient's: the JSON that ``SeldonClient.predict(data=row, names=FEATURES,
payload_type="ndarray")`` and ``SeldonClient.feedback(prediction_request, prediction_response,
reward)`` post, to the same paths (``gateway="istio"`` for the ingress, ``gateway="seldon"`` for
an arm's endpoint; tests/reliability checks the bodies are identical). Only the transport
differs: SeldonClient opens a new connection with a new ``requests`` session for every call,
and its protobuf round trips are pure Python here - about 3 ms of client CPU per row, which made
the client, not the servers, the bottleneck (bench/README.md). The replay keeps one connection
per endpoint alive per row in flight, on one asyncio event loop (``serving.client``: the messages
and the keep-alive connections), ``concurrency`` rows in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from serving import aio
from serving.client import (
    Connections,
    NoAnswer,
    NotSent,
    feedback_message,
    first_value,
    prediction_request,
)
from serving.endpoints import Endpoints  # noqa: F401  (feedback.Endpoints: old callers)
from serving.local import StackNotRunning
from training.data import FEATURES, SEED, TARGET, load_wine_quality, split_holdout

REPO = Path(__file__).resolve().parent
RUNS_DIR = REPO / "runs"
# seldon-core's Feedback.reward is a float32, and the Python wrapper skips a reward that is
# exactly 0 (`if not reward: return` in metrics.py), so a reward must stay above float32's
# smallest normal number; this floor is far above it and far below any real reward.
REWARD_FLOOR = 1e-6
# how long refused connections are retried: covers the local supervisor's restart of a killed
# gateway (about 2 s) with room for a busy machine; a stack that stays down fails the rows after it
DEFAULT_DEADLINE = 30.0
PUID_HEADER = "Seldon-Puid"  # the executor's request id header (seldon-core executor/api/rest)
MAY_HAVE_COUNTED = "it may have been counted, so it was not sent again"
LOG_COLUMNS = [
    "request_id",
    "arm",
    "node",
    "truth",
    "prediction",
    "reward",
    "predict_ms",
    "feedback_ms",
    "feedback_via",
    "feedback_arm",
    "predict_status",
    "feedback_status",
    "attempts",  # requests sent for the row: 2 (a prediction and a feedback) when none was retried
    "error",
    # the Seldon-Puid sent with the answered prediction: the request id of its request-logger events.
    # Each executor makes its own puid unless the caller sends one, so without it a shadow's events
    # could not be joined with the main arm's (experiment/paired.py: from_replay)
    "puid",
]
# a monitored replay (``replay(..., monitor=...)``) adds: the look (the row's place in the order rows
# completed, which is the order the monitor saw them) and the monitor's decision at that look
MONITOR_COLUMNS = ["look", "decision"]
AFTER_STOP = "after stop"  # a row that was in flight when the monitor stopped: logged, not looked at


def reward(truth: float, prediction: float) -> float:
    """The reward for one prediction: ``exp(-(truth - prediction)^2 / 2)``, in (0, 1].

    The original example sends ``1 / (truth - prediction)^2`` (and 500 when they are equal,
    which a regressor's float output never is). That reward is unbounded: one near-exact guess
    earns thousands and dominates any mean, so the per-arm average the dashboard shows is noise.
    A bounded reward keeps the same order (smaller error, larger reward) and lets means and
    confidence intervals behave: 1 for an exact prediction, 0.61 one quality point off, 0.14 two
    points off. Of the bounded forms we tried on the hold-out rows, this Gaussian one separates
    the two arms best: a test of 80% power needs about 420 requests per arm, against about 560
    for ``1 / (1 + error^2)`` and thousands for ``exp(-|error|)``.

    It is floored at ``REWARD_FLOOR`` because seldon-core silently skips a reward of exactly 0
    (``if not reward: return``) and stores rewards as float32: an enormous error must still count
    as one (bad) feedback, not vanish from the totals.
    """
    truth, prediction = float(truth), float(prediction)
    if not (math.isfinite(truth) and math.isfinite(prediction)):
        raise ValueError(f"reward needs finite numbers, got truth={truth!r} prediction={prediction!r}")
    error = truth - prediction  # may overflow to inf for huge inputs: exp(-inf) = 0, then the floor
    return max(math.exp(-0.5 * error * error), REWARD_FLOOR)


@dataclass
class ReplayResult:
    log: pd.DataFrame
    seconds: float
    path: Path | None = None
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    started: float = 0.0  # wall-clock (Unix) times of the replay, e.g. for Prometheus range queries
    finished: float = 0.0
    decision: str | None = (
        None  # a monitored replay: the monitor's decision (``continue``: it ran out of rows)
    )
    reason: str = ""  # ... and why
    look: int | None = None  # ... and the look at which it stopped

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
    - a prediction that got a 5xx or no answer: predicting again changes no reward (at most
      ``retries`` times);
    - a feedback answered 503 by the gateway, which could not reach the arm (at most ``retries``).

    A feedback that was sent but got no answer (reset, timeout) may have been counted: it is
    reported in the log, never sent twice - a duplicate reward would bias that arm's mean.
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
                failed += 1
            except NotSent as e:
                status, response, error, not_sent = None, None, f"predict: {e}", True
            except (TimeoutError, NoAnswer) as e:  # no answer; predicting again is harmless
                status, response, error = None, None, f"predict: {type(e).__name__}: {e}"
                failed += 1
            if failed > self.retries or not await self._again(connections, row["attempts"], not_sent):
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
        row["reward"] = reward(truth, row["prediction"])
        # 4. feedback to the arm that served (or, to measure the flaw, through the ingress)
        url = self.arm_feedback_urls[row["arm"]] if self.feedback_via == "arm" else self.ingress_feedback_url
        body = feedback_message(request, response, row["reward"])
        start, attempt, failed = time.perf_counter(), 0, 0
        while True:
            attempt += 1
            row["attempts"] += 1
            try:
                status, answer, error = await self._post(connections, url, body)
            except NotSent as e:  # nothing left this machine: safe to send again
                row["feedback_status"], row["error"] = None, f"feedback: {e}"
                if await self._again(connections, attempt, not_sent=True):
                    continue
                break
            except (TimeoutError, NoAnswer) as e:
                # sent, and may have been counted: report it, never send it twice
                what = f"no answer within {self.timeout:g} s" if isinstance(e, TimeoutError) else str(e)
                row["feedback_status"] = None
                row["error"] = f"feedback: {what}; {MAY_HAVE_COUNTED}"
                break
            row["feedback_status"] = status
            if status == 200:
                row["error"] = ""
                served = (answer or {}).get("meta", {}).get("requestPath") or {}
                row["feedback_arm"] = self.endpoints.nodes.get(next(iter(served), ""), "")
                break
            row["error"] = f"feedback: {error}"
            # 503: the gateway could not reach the arm, nothing was counted - retry.
            # Anything else (a 504 may have been counted) is reported, not re-sent twice.
            failed += 1
            if status != 503 or failed > self.retries or not await self._again(connections, attempt, False):
                break
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
    ``reason`` and ``look``; ``experiment.monitored.RunMonitor`` is the sequential test with
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_argument_group("target (default: the local stack)")
    target.add_argument("--state-dir", help="the local stack's state folder (default .stack)")
    target.add_argument(
        "--ingress", help="cluster: host:port (or https://host:port) of the ingress (Istio gateway)"
    )
    target.add_argument("--namespace", default="default")
    target.add_argument("--deployment", default="wines-classifier")
    target.add_argument(
        "--predictor",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="cluster: a predictor's own endpoint (its <sdep>-<predictor> Service, http unless the "
        "address says https://); repeat per arm",
    )
    target.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NODE=PREDICTOR",
        help="cluster: graph node -> predictor (default: same names)",
    )
    parser.add_argument("--limit", type=int, help="replay only this many rows")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--seed", type=int, default=SEED, help="the training split's seed (and the replay order)"
    )
    parser.add_argument("--feedback-via", choices=["arm", "ingress"], default="arm")
    parser.add_argument("--log", help="CSV log path (default runs/feedback-<via>-<time>.csv)")
    parser.add_argument(
        "--retries", type=int, default=3, help="retries of a failed prediction or of a feedback answered 503"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE,
        help="seconds to keep retrying while the endpoints refuse connections (e.g. a restarting gateway)",
    )
    parser.add_argument(
        "--rate", type=float, help="rows per second, like production traffic (default: as fast as possible)"
    )
    parser.add_argument(
        "--monitor",
        metavar="CONTROL",
        help="local stack: run the monitored experiment against the champion CONTROL (e.g. model-b): "
        "plan from the training rows, stop when the sequential test decides or a guardrail is breached "
        "(then all traffic goes back to CONTROL), and print the decision (experiment.run_monitored)",
    )
    args = parser.parse_args(argv)
    if args.monitor:
        if args.ingress:
            parser.error("--monitor runs on the local stack (its rollback edits the stack's manifest)")
        return monitored_main(args)
    try:
        if args.ingress:
            predictors = dict(p.split("=", 1) for p in args.predictor)
            if not predictors:
                parser.error("--ingress needs --predictor NAME=HOST:PORT for every arm")
            nodes = dict(n.split("=", 1) for n in args.node) or {name: name for name in predictors}
            scheme, _, gateway = args.ingress.rpartition("://")
            endpoints = Endpoints(
                gateway, args.namespace, args.deployment, predictors, nodes, scheme=scheme or "http"
            )
        else:
            endpoints = Endpoints.local(args.state_dir)
        result = replay(
            endpoints,
            args.limit,
            args.concurrency,
            args.seed,
            args.feedback_via,
            args.log,
            args.retries,
            rate=args.rate,
            deadline=args.deadline,
        )
    except (StackNotRunning, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"log: {result.path}")
    if len(result.failures):
        print(
            result.failures[["request_id", "arm", "predict_status", "feedback_status", "error"]].to_string(
                index=False
            )
        )
        return 2
    return 0


def monitored_main(args) -> int:
    """``--monitor``: plan, run until the test decides, decide (the notebook's steps 5-6 in one command)."""
    from experiment.log import LogError
    from experiment.monitored import plan_experiment, run_monitored
    from serving.local import DEFAULT_STATE_DIR, LocalStack

    try:
        stack = LocalStack(args.state_dir or DEFAULT_STATE_DIR)
        stack.require_running()
        plan = plan_experiment(stack.manifest_path, args.monitor, seed=args.seed)
        print(plan)
        result = run_monitored(
            Endpoints.local(args.state_dir),
            plan,
            state_dir=stack.state_dir,
            prometheus_url=stack.prometheus_url,
            limit=args.limit,
            rate=args.rate,
            concurrency=args.concurrency,
            log_path=args.log,
            seed=args.seed,
        )
    except (StackNotRunning, ValueError, LogError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.replay.summary())
    print(result.sentence)
    print(f"log: {result.replay.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
