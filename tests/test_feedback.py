"""feedback.py's retries without a stack: refused connections (nothing sent) are retried until the
deadline, then reported - and once the endpoints have been unreachable that long, the rows that
follow fail at once instead of waiting a deadline each. Real sockets on loopback ports nothing
listens on. A feedback whose answer is cut off is resent to the arm with its prediction's request
id (a stand-in server on loopback), never through the ingress. The gateway killed mid-replay, with a
real stack: tests/reliability/test_faults.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pandas as pd
import pytest
from aiohttp import web

import feedback
from serving.endpoints import Endpoints
from serving.local import free_port


def nowhere() -> Endpoints:
    return Endpoints(
        gateway=f"127.0.0.1:{free_port()}",
        namespace="default",
        deployment="wines-classifier",
        predictors={"model-a": f"127.0.0.1:{free_port()}"},
        nodes={"model-a": "model-a"},
    )


def test_refused_connections_are_retried_until_the_deadline_then_every_row_is_reported():
    deadline = 1.0
    rows = feedback.holdout_rows(limit=6)
    replayer = feedback.Replayer(nowhere(), deadline=deadline)
    start = time.perf_counter()
    log = replayer.replay(rows, concurrency=2, progress=False)
    seconds = time.perf_counter() - start
    assert len(log) == len(rows) and log["predict_status"].isna().all()
    assert log["error"].str.startswith("predict: cannot connect to 127.0.0.1:").all(), log["error"].tolist()
    # the first rows kept trying for the deadline (backoff from 50 ms: several attempts) ...
    assert log["attempts"].max() >= 4
    assert deadline <= seconds
    # ... and the later rows did not wait a deadline each: the outage was already that old
    assert seconds < deadline + 2.5, seconds


def test_a_negative_or_unreadable_deadline_is_refused():
    with pytest.raises(ValueError, match="deadline"):
        feedback.Replayer(nowhere(), deadline=-1)
    with pytest.raises(SystemExit):
        feedback.main(["--deadline", "soon"])


def test_cli_cluster_mode_takes_a_url_and_reports_each_row_it_could_not_send(tmp_path, capsys):
    ingress, arm = free_port(), free_port()
    log = tmp_path / "log.csv"
    code = feedback.main(
        ["--ingress", f"http://127.0.0.1:{ingress}", "--predictor", f"model-a=127.0.0.1:{arm}"]
        + ["--limit", "3", "--deadline", "0.3", "--log", str(log)]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert "feedback accepted 0" in out and "failed 3" in out
    assert out.count(f"cannot connect to 127.0.0.1:{ingress}") == 3, out
    assert len(pd.read_csv(log)) == 3


class CutOffFeedback:
    """A stand-in ingress and arm on one loopback port: predictions are answered by ``model-a``;
    the first copy of each feedback is counted, then its connection is cut before any answer (a
    gateway killed after forwarding it); a copy with a request id it counted already is answered,
    not counted again - as the model server does (serving/mlflow_server.py)."""

    def __init__(self):
        self.port = free_port()
        self.received: list[str | None] = []  # the Seldon-Puid of every feedback, in order
        self.counted: set[str] = set()
        self.predicted: list[str | None] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _predict(self, request: web.Request) -> web.Response:
        self.predicted.append(request.headers.get("Seldon-Puid"))
        body = {"data": {"names": [], "ndarray": [5.5]}, "meta": {"requestPath": {"model-a": "image"}}}
        return web.json_response(body)

    async def _feedback(self, request: web.Request) -> web.Response:
        await request.read()
        puid = request.headers.get("Seldon-Puid")
        self.received.append(puid)
        if puid not in self.counted:
            self.counted.add(puid)
            request.transport.close()  # counted, and the answer never leaves
        return web.json_response({"meta": {"requestPath": {"model-a": "image"}}})

    def endpoints(self) -> Endpoints:
        address = f"127.0.0.1:{self.port}"
        return Endpoints(address, "default", "wines-classifier", {"model-a": address}, {"model-a": "model-a"})

    def __enter__(self):
        app = web.Application()
        app.router.add_post("/seldon/default/wines-classifier/api/v1.0/predictions", self._predict)
        app.router.add_post("/seldon/default/wines-classifier/api/v1.0/feedback", self._feedback)
        app.router.add_post("/api/v1.0/feedback", self._feedback)
        self._runner = web.AppRunner(app)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self):
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_a_feedback_cut_off_unanswered_is_resent_to_the_arm_with_its_prediction_id():
    rows = feedback.holdout_rows(limit=5)
    with CutOffFeedback() as server:
        log = feedback.Replayer(server.endpoints(), deadline=5).replay(rows, concurrency=2, progress=False)
    assert (log["feedback_status"] == 200).all() and (log["error"] == "").all(), log.to_string()
    assert (log["feedback_resent"] == 1).all()
    # each feedback carried its answered prediction's request id, the same on both copies
    assert sorted(server.received) == sorted(2 * log["puid"].tolist())
    assert set(log["puid"]) == server.counted and set(server.predicted) == server.counted


def test_through_the_ingress_a_feedback_cut_off_is_reported_never_resent():
    rows = feedback.holdout_rows(limit=3)
    with CutOffFeedback() as server:
        replayer = feedback.Replayer(server.endpoints(), feedback_via="ingress", deadline=5)
        log = replayer.replay(rows, concurrency=2, progress=False)
    # the ingress may send a second copy to the other arm, which would count it too
    assert log["feedback_status"].isna().all() and (log["feedback_resent"] == 0).all()
    assert log["error"].str.endswith(feedback.MAY_HAVE_COUNTED).all(), log["error"].tolist()
    assert sorted(server.received) == sorted(log["puid"])
