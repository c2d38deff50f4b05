"""The executor's request logger against the project's sink, over real HTTP on 127.0.0.1.

Each test runs its own event loop with a real aiohttp server (the sink, or a deliberately slow
or failing receiver) on a free loopback port; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from serving.request_logger import (
    CE_FEEDBACK,
    CE_REQUEST,
    CE_RESPONSE,
    HEADERS,
    LoggerSpec,
    RequestLogger,
    Sink,
    documents,
    emitter,
    local_sink_ports,
    read_events,
    skip_logging,
)

REPO = Path(__file__).resolve().parents[2]
NAMES = {"namespace": "default", "deployment": "wines-classifier", "predictor": "model-b", "node": "model-b"}
REQUEST = json.dumps({"data": {"names": ["a", "b"], "ndarray": [[1.0, 2.0]]}}).encode()
RESPONSE = json.dumps(
    {"data": {"names": [], "ndarray": [5.5]}, "meta": {"requestPath": {"model-b": "x"}}}
).encode()


def run(coro):
    return asyncio.run(coro)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        await asyncio.sleep(0.01)


async def receiver(handler) -> tuple[web.AppRunner, str]:
    """Another real HTTP receiver on a free loopback port (slow, failing ...)."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/"


def dropped_metric(reason: str, names=NAMES) -> float:
    labels = {
        "deployment_name": names["deployment"],
        "predictor_name": names["predictor"],
        "model_name": names["node"],
        "reason": reason,
    }
    return REGISTRY.get_sample_value("request_logger_events_dropped_total", labels) or 0.0


def timed_calls(calls) -> list[float]:
    """Seconds each call took, in the caller's own (synchronous) time."""
    seconds = []
    for call in calls:
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


# ------------------------------------------------------------------------- events and headers
def test_events_reach_the_sink_with_the_executors_headers(tmp_path):
    puids = [str(uuid.uuid4()) for _ in range(20)]

    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        before = datetime.now(UTC)
        async with RequestLogger(sink.url, mode="all", **NAMES) as log:
            for puid in puids:
                assert log.log_request(puid, REQUEST)
                assert log.log_response(puid, RESPONSE)
            # the sink counts an event when it reads it, the logger when the sink's answer is back
            await until(lambda: sink.received == 2 * len(puids) and log.sent == 2 * len(puids))
            assert log.sent == sink.received and not log.dropped
        after = datetime.now(UTC)
        await sink.close()
        return before, after

    before, after = run(scenario())
    events = read_events(tmp_path)
    assert len(events) == 2 * len(puids)  # one event per call
    assert [p.name for p in tmp_path.iterdir()] == [
        "inference-log-seldon-default-wines-classifier-model-b.jsonl"
    ]
    ids = set()
    for event in events:
        headers = event["headers"]
        assert set(headers) == set(HEADERS), "exactly the executor's CloudEvents headers"
        assert headers["Ce-Specversion"] == "1.0"
        assert headers["Ce-Type"] in (CE_REQUEST, CE_RESPONSE)
        assert headers["Ce-Source"] == "http://:8000/"  # what v1.17.1 sends without --hostname
        assert headers["Content-Type"] == "application/json"
        assert headers["Ce-Modelid"] == "model-b"
        assert headers["Ce-Inferenceservicename"] == "wines-classifier"
        assert headers["Ce-Namespace"] == "default"
        assert headers["Ce-Endpoint"] == "model-b"
        assert headers["Ce-Protocol"] == "seldon"
        assert headers["Ce-Requestid"] in puids
        assert uuid.UUID(headers["Ce-Id"]).version == 4 and headers["Ce-Id"] != headers["Ce-Requestid"]
        ids.add(headers["Ce-Id"])
        # Go's RFC3339Nano in UTC, stamped when sent
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", headers["Ce-Time"])
        sent = datetime.fromisoformat(headers["Ce-Time"].replace("Z", "+00:00"))
        assert before <= sent <= after
        expected = REQUEST if headers["Ce-Type"] == CE_REQUEST else RESPONSE
        assert event["body"] == json.loads(expected)
    assert len(ids) == len(events), "a fresh Ce-Id per event"
    # seldon-request-logger's pairing: one document per request id with its request and response
    merged = documents(tmp_path)["inference-log-seldon-default-wines-classifier-model-b"]
    assert sorted(merged) == sorted(puids)
    assert all(set(doc) == {"request", "response"} for doc in merged.values())


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("all", {CE_REQUEST, CE_RESPONSE, CE_FEEDBACK}),
        ("request", {CE_REQUEST}),
        ("response", {CE_RESPONSE, CE_FEEDBACK}),
    ],
)
def test_modes_choose_the_events(tmp_path, mode, expected):
    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        async with RequestLogger(sink.url, mode=mode, **NAMES) as log:
            results = [
                log.log_request("p1", REQUEST),
                log.log_response("p1", RESPONSE),
                log.log_feedback("p2", json.dumps({"reward": 0.5}).encode()),
            ]
            await until(lambda: sink.received == len(expected))
            await asyncio.sleep(0.1)  # nothing more arrives
        await sink.close()
        return results

    results = run(scenario())
    assert sum(results) == len(expected)
    assert {e["type"] for e in read_events(tmp_path)} == expected


def test_skip_logging_header_and_default_endpoint(tmp_path, monkeypatch):
    assert skip_logging({"seldon-skip-logging": "TRUE"}) and skip_logging({"Seldon-Skip-Logging": "1"})
    assert skip_logging({"Seldon-Skip-Logging": "on"}) and not skip_logging({"Seldon-Skip-Logging": "yes"})
    assert not skip_logging({}) and not skip_logging(None)

    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        # no url: the executor's REQUEST_LOGGER_DEFAULT_ENDPOINT
        monkeypatch.setenv("REQUEST_LOGGER_DEFAULT_ENDPOINT", sink.url)
        spec = LoggerSpec.of({"name": "model-b", "logger": {"mode": "all"}})
        assert spec.url is None and spec.resolved_url() == sink.url
        async with RequestLogger.for_graph(
            {"name": "model-b", "logger": {"mode": "all"}}, "default", "wines-classifier", "model-b"
        ) as log:
            assert log.url == sink.url
            assert not log.log_request("skipped", REQUEST, headers={"Seldon-Skip-Logging": "true"})
            assert log.log_request("kept", REQUEST, headers={"Seldon-Skip-Logging": "false"})
            await until(lambda: sink.received == 1)
        await sink.close()

    run(scenario())
    assert [e["requestid"] for e in read_events(tmp_path)] == ["kept"]
    assert RequestLogger.for_graph({"name": "n"}, "default", "d", "p") is None
    with pytest.raises(ValueError, match="logger.mode"):
        LoggerSpec(mode="everything")


def test_gzip_payload_is_sent_decompressed(tmp_path):
    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        async with RequestLogger(sink.url, **NAMES) as log:
            log.log_response("p", gzip.compress(RESPONSE), content_encoding="gzip")
            await until(lambda: sink.received == 1)
        await sink.close()

    run(scenario())
    assert read_events(tmp_path)[0]["body"] == json.loads(RESPONSE)


# ------------------------------------------------------------------- a logger in trouble
def test_dead_sink_costs_the_caller_nothing_and_every_loss_is_counted():
    names = dict(NAMES, predictor="dead-sink")
    before = dropped_metric("send_error", names)

    async def scenario():
        async with RequestLogger(f"http://127.0.0.1:{closed_port()}/", **names) as log:
            for i in range(200):
                log.log_request(f"p{i}", REQUEST)
            # every call has returned and not one send was even tried: they only queue (a call that
            # tried the dead sink itself would have counted its loss already)
            tried_before_the_loop_ran = log.sent + sum(log.dropped.values())
            await until(lambda: log.dropped["send_error"] == 200)
            return tried_before_the_loop_ran, log.sent

    tried, sent = run(scenario())
    assert tried == 0 and sent == 0
    assert dropped_metric("send_error", names) - before == 200


def test_slow_sink_never_blocks_and_the_queue_bound_holds():
    names = dict(NAMES, predictor="slow-sink")
    delay, queue_size, workers, calls = 0.5, 4, 2, 20
    before = dropped_metric("queue_full", names)
    in_flight = []

    async def slow(request):
        in_flight.append(1)
        await asyncio.sleep(delay)
        in_flight.pop()
        return web.Response(status=200)

    async def scenario():
        runner, url = await receiver(slow)
        log = RequestLogger(url, queue_size=queue_size, workers=workers, write_timeout=0.2, **names).start()
        seconds = timed_calls([lambda i=i: log.log_request(f"p{i}", REQUEST) for i in range(calls)])
        peak = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # through the write timeout
            peak = max(peak, log.queued)
            assert len(in_flight) <= workers
            await asyncio.sleep(0.01)
        dropped = dict(log.dropped)
        await until(lambda: log.sent == queue_size + workers)
        await log.close()
        await runner.cleanup()
        return seconds, peak, dropped

    seconds, peak, dropped = run(scenario())
    # a call that waited for the sink would take its delay: the calls together take a fraction of one
    # (a bound on blocking, far from any scheduler pause: not a latency goal)
    assert sum(seconds) < delay / 2, f"the log calls took {sum(seconds) * 1000:.1f} ms"
    assert peak <= queue_size
    # the workers hold one event each, the queue holds queue_size; the rest wait 0.2 s and are dropped
    assert dropped == {"queue_full": calls - queue_size - workers}
    assert dropped_metric("queue_full", names) - before == calls - queue_size - workers


def test_events_waiting_for_room_are_bounded_too():
    """With a hung sink and a long write timeout, at most queue_size events wait for room; the rest
    are dropped at once (the executor would keep one goroutine per event)."""
    release = None

    async def hung(request):
        await release.wait()
        return web.Response()

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        runner, url = await receiver(hung)
        log = RequestLogger(
            url, queue_size=2, workers=1, write_timeout=30, **dict(NAMES, predictor="waiting")
        )
        log.start()
        for i in range(10):
            log.log_request(f"p{i}", REQUEST)
        counts = (dict(log.dropped), log.queued, len(log._waiting))
        release.set()
        await until(lambda: log.sent == 4)  # 2 queued + 2 that waited
        await log.close()
        await runner.cleanup()
        return counts, dict(log.dropped)

    (dropped_at_once, queued, waiting), dropped = run(scenario())
    assert (dropped_at_once, queued, waiting) == ({"queue_full": 6}, 2, 2)
    assert dropped == {"queue_full": 6}


def test_non_2xx_and_hung_receivers_are_counted():
    names = dict(NAMES, predictor="bad-sink")

    async def failing(request):
        return web.Response(status=503)

    release = None

    async def hung(request):
        await release.wait()
        return web.Response()

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        runner_503, url_503 = await receiver(failing)
        runner_hung, url_hung = await receiver(hung)
        async with RequestLogger(url_503, **names) as log:
            for i in range(5):
                log.log_response(f"p{i}", RESPONSE)
            await until(lambda: log.dropped["http_status"] == 5)
        async with RequestLogger(url_hung, send_timeout=0.3, **names) as log:
            log.log_response("p", RESPONSE)
            await until(lambda: log.dropped["send_timeout"] == 1)
        release.set()
        await runner_503.cleanup()
        await runner_hung.cleanup()

    run(scenario())


def test_close_counts_what_it_could_not_send():
    release = None

    async def slow(request):
        await release.wait()
        return web.Response()

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        runner, url = await receiver(slow)
        log = RequestLogger(url, workers=1, **dict(NAMES, predictor="closing")).start()
        for i in range(3):
            log.log_request(f"p{i}", REQUEST)
        await asyncio.sleep(0.1)
        await log.close(drain=0.1)
        assert not log.log_request("late", REQUEST)  # closed: nothing more is taken
        release.set()
        await runner.cleanup()
        return dict(log.dropped)

    assert run(scenario()) == {"closed": 3}  # the one in flight and the two queued


def test_logging_before_start_is_a_clear_error():
    with pytest.raises(RuntimeError, match="start"):
        RequestLogger("http://127.0.0.1:9/", **NAMES).log_request("p", REQUEST)


# ---------------------------------------------------------------------------------- the sink
def test_sink_refuses_what_is_not_a_request_logger_event(tmp_path):
    good = {
        "Ce-Specversion": "1.0",
        "Ce-Id": "1",
        "Ce-Type": CE_REQUEST,
        "Ce-Source": "http://:8000/",
        "Ce-Namespace": "default",
        "Ce-Inferenceservicename": "wines-classifier",
        "Ce-Endpoint": "model-a",
        "Content-Type": "application/json",
    }
    cases = {
        "Ce-Id": dict(good, **{"Ce-Id": ""}),
        "Ce-Type": dict(good, **{"Ce-Type": "com.example.other"}),
        "Ce-Specversion": dict(good, **{"Ce-Specversion": "0.3"}),
        "Ce-Namespace": dict(good, **{"Ce-Namespace": "../../etc"}),
    }

    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        answers = {}
        async with aiohttp.ClientSession() as session:
            for name, headers in cases.items():
                async with session.post(sink.url, data=b"{}", headers=headers) as r:
                    answers[name] = (r.status, (await r.json())["error"])
            async with session.post(sink.url, data=b"{not json", headers=good) as r:
                answers["body"] = (r.status, (await r.json())["error"])
            async with session.post(
                sink.url, data=b"\x08\x01", headers=dict(good, **{"Content-Type": "application/protobuf"})
            ) as r:
                answers["protobuf"] = (r.status, "")
        await sink.close()
        return answers

    answers = run(scenario())
    for name in cases:
        assert answers[name][0] == 400 and name in answers[name][1]
    assert answers["body"][0] == 400 and "not JSON" in answers["body"][1]
    assert answers["protobuf"][0] == 200
    (stored,) = read_events(tmp_path)  # only the protobuf event, kept exactly; requestid falls back to Ce-Id
    assert stored["body_base64"] == "CAE=" and stored["requestid"] == "1"
    assert not list(Path(tmp_path).rglob("etc*"))


def test_local_sink_ports_reads_loopback_logger_urls():
    manifest = {
        "spec": {
            "predictors": [
                {
                    "name": "a",
                    "graph": {"name": "a", "logger": {"mode": "all", "url": "http://127.0.0.1:8004/"}},
                },
                {"name": "b", "graph": {"name": "b", "logger": {"mode": "all", "url": "http://broker.svc/"}}},
                {"name": "c", "graph": {"name": "c", "logger": {"mode": "all"}}},
                {"name": "d", "graph": {"name": "d"}},
            ]
        }
    }
    assert local_sink_ports(manifest) == {8004}


def test_sink_command_line(tmp_path):
    """``python -m serving.request_logger --port 0 --out DIR`` serves on loopback and writes lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.request_logger", "--port", "0", "--out", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)

        async def scenario():
            async with RequestLogger(url, **NAMES) as log:
                log.log_feedback("p", json.dumps({"reward": 1.0}).encode())
                await until(lambda: log.sent == 1)

        run(scenario())
        (event,) = read_events(tmp_path)
        assert event["type"] == CE_FEEDBACK and event["body"] == {"reward": 1.0}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_constants_match_the_executor():
    assert (emitter.DEFAULT_QUEUE_SIZE, emitter.DEFAULT_WORKERS, emitter.DEFAULT_WRITE_TIMEOUT) == (
        10000,
        10,
        2.0,
    )


# ------------------------------------------------------------------ loggers in their own process
def test_offloaded_loggers_send_from_a_child_process_and_count_in_this_one(tmp_path):
    from serving.request_logger.offload import NICENESS, LoggerProcess

    names = {"namespace": "default", "deployment": "offload-test"}
    dead = f"http://127.0.0.1:{closed_port()}/"

    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        loggers = {
            "model-a": RequestLogger(sink.url, predictor="model-a", node="model-a", **names),
            "model-b": RequestLogger(dead, predictor="model-b", node="model-b", mode="request", **names),
        }
        hub = await LoggerProcess(loggers, drain=2.0).start()
        assert hub.pid not in (None, os.getpid())
        # it yields the shared cores to the callers' path (the gateway, the model servers)
        assert psutil.Process(hub.pid).nice() == min(19, os.nice(0) + NICENESS)
        assert os.getsid(hub.pid) == hub.pid  # a session of its own: a CPU share of its own
        a, b = hub["model-a"], hub["model-b"]
        seconds = timed_calls(
            [lambda i=i: a.log_request(f"p{i}", REQUEST) for i in range(50)]
            + [
                lambda i=i: a.log_response(f"p{i}", gzip.compress(RESPONSE), content_encoding="gzip")
                for i in range(50)
            ]
            + [lambda i=i: b.log_request(f"p{i}", REQUEST) for i in range(20)]
        )
        assert not b.log_response("p0", RESPONSE)  # mode request
        assert not a.log_request("skip", REQUEST, headers={"Seldon-Skip-Logging": "1"})
        await until(lambda: a.sent == 100 and b.dropped["send_error"] == 20)
        await hub.close()
        await sink.close()
        return seconds, (a.sent, dict(a.dropped)), (b.sent, dict(b.dropped))

    before = dropped_metric(
        "send_error", {"deployment": "offload-test", "predictor": "model-b", "node": "model-b"}
    )
    seconds, a, b = run(scenario())
    assert a == (100, {}) and b == (0, {"send_error": 20})
    # the counts reached this process's registry
    after = dropped_metric(
        "send_error", {"deployment": "offload-test", "predictor": "model-b", "node": "model-b"}
    )
    assert after - before == 20
    # a call that waited on the child or the dead sink would take the drain's seconds (not a latency goal)
    assert sum(seconds) < 1.0, f"the log calls took {sum(seconds) * 1000:.1f} ms"
    events = read_events(tmp_path)
    assert len(events) == 100 and {e["endpoint"] for e in events} == {"model-a"}
    assert all(set(e["headers"]) == set(HEADERS) for e in events)
    responses = [e for e in events if e["type"] == CE_RESPONSE]
    assert len(responses) == 50 and all(e["body"] == json.loads(RESPONSE) for e in responses)
    assert len({e["id"] for e in events}) == 100


def test_offloaded_loggers_count_events_after_the_child_died(tmp_path):
    from serving.request_logger.offload import LoggerProcess

    async def scenario():
        sink = Sink(tmp_path)
        await sink.start()
        hub = await LoggerProcess(
            {"p": RequestLogger(sink.url, **dict(NAMES, predictor="child-died"))}
        ).start()
        log = hub["p"]
        log.log_request("before", REQUEST)
        await until(lambda: log.sent == 1)
        os.kill(hub.pid, 9)  # the child this test started
        await hub._process.wait()
        seconds = timed_calls([lambda i=i: log.log_request(f"after{i}", REQUEST) for i in range(10)])
        await hub.close()
        await sink.close()
        return seconds, log.sent, dict(log.dropped)

    seconds, sent, dropped = run(scenario())
    assert sent == 1 and dropped == {"send_error": 10}
    assert sum(seconds) < 1.0, f"the log calls took {sum(seconds) * 1000:.1f} ms"  # no wait on the dead child
