"""The request loggers in a process of their own, so that sending costs the gateway no CPU.

Each CloudEvent is one HTTP POST; measured on this machine, a POST costs the sending process
about 0.2 ms of CPU whatever the client library (aiohttp or h11 over asyncio streams: mostly
system calls and event-loop wake-ups). The executor sends from goroutines that run on other cores;
a Python gateway sending on its own event loop would spend that CPU between the requests it
serves. Here the gateway only appends each event to a buffer that is written to a pipe once per
event-loop iteration; a child process (``python -m serving.request_logger.offload``) runs the
same ``RequestLogger``s - the executor's queue, workers and write timeout - and reports what it
sent and dropped back, so the counts and the ``request_logger_events_*`` metrics stay in the
gateway's process and registry.

    hub = LoggerProcess(RequestLogger.for_manifest(manifest))   # {predictor: RequestLogger}
    await hub.start()
    hub["model-a"].log_request(puid, body, headers=request.headers)
    await hub.close()
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import os
import struct
import sys
from pathlib import Path

from serving.request_logger.emitter import (
    CE_FEEDBACK,
    CE_REQUEST,
    CE_RESPONSE,
    CLOSED,
    DROPPED,
    QUEUE_FULL,
    SEND_ERROR,
    SENT,
    RequestLogger,
    skip_logging,
)

REPO = Path(__file__).resolve().parents[2]
FRAME = struct.Struct("!II")  # header length, body length
TYPES = (CE_REQUEST, CE_RESPONSE, CE_FEEDBACK)
REPORT_INTERVAL = 0.2  # seconds between the child's reports of its counts
# the pipe's buffer in the gateway: beyond this the child is not keeping up and events are dropped
MAX_BUFFER = 64 << 20
# The child's CPU niceness, as the stack's sink and shadow model server have: locally it shares the
# callers' cores with the gateway and the model servers (on a cluster the sink has pods of its own);
# sending an event costs ~0.2-0.5 ms of CPU, so under contention the callers' requests go first
# and the events wait in the child's bounded queue (what cannot wait is dropped and counted).
NICENESS = 10
# ... and the niceness of the session it runs in, for Linux's autogroup scheduler (see yield_cpu)
SESSION_NICENESS = 0


def yield_cpu(pid: int = 0, niceness: int = SESSION_NICENESS) -> None:
    """Set the autogroup niceness of the session of ``pid`` (0: this process), which must lead a
    session of its own.

    With autogroup on (``/proc/sys/kernel/sched_autogroup_enabled``, the default of most distros'
    kernels) the CPU is shared between sessions first, and a process's nice value orders it only
    within its session: in the stack's session a niced shadow still takes its CPU from the share of
    the gateway and the model server beside it. In a session of its own it takes a session's share
    instead, as a pod on other CPU would. Without autogroup nothing is written and the process's own
    nice value does the work."""
    try:
        Path(f"/proc/{pid or 'self'}/autogroup").write_text(str(niceness))
    except OSError:
        pass


def _config(log: RequestLogger) -> dict:
    return {
        "url": log.url,
        "namespace": log.namespace,
        "deployment": log.deployment,
        "predictor": log.predictor,
        "node": log.node,
        "mode": log.spec.mode,
        "protocol": log.protocol,
        "source": log.source,
        "queue_size": log.queue_size,
        "workers": log.workers,
        "write_timeout": log.write_timeout,
        "send_timeout": log.send_timeout,
    }


class RemoteLogger:
    """The gateway's side of one predictor's logger: the same calls as ``RequestLogger``."""

    def __init__(self, hub: LoggerProcess, index: int, log: RequestLogger):
        self.hub, self.index, self.spec = hub, index, log.spec
        self.url, self.predictor, self.node, self.deployment = (
            log.url,
            log.predictor,
            log.node,
            log.deployment,
        )
        self.dropped: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self._labels = (log.deployment, log.predictor, log.node)

    def log_request(self, puid: str, body: bytes, content_type: str = "application/json", **kw) -> bool:
        return self.spec.logs_request and self._log(0, puid, body, content_type, **kw)

    def log_response(self, puid: str, body: bytes, content_type: str = "application/json", **kw) -> bool:
        return self.spec.logs_response and self._log(1, puid, body, content_type, **kw)

    def log_feedback(self, puid: str, body: bytes, content_type: str = "application/json", **kw) -> bool:
        return self.spec.logs_response and self._log(2, puid, body, content_type, **kw)

    def _log(self, kind, puid, body, content_type, headers=None, content_encoding=None) -> bool:
        if skip_logging(headers):
            return False
        return self.hub._put(self, kind, puid, body, content_type, content_encoding)

    def _count(self, sent: int = 0, dropped: dict | None = None) -> None:
        if sent:
            self.sent += sent
            SENT.labels(*self._labels).inc(sent)
        for reason, n in (dropped or {}).items():
            if n:
                self.dropped[reason] += n
                DROPPED.labels(*self._labels, reason).inc(n)


class LoggerProcess:
    """One child process sending the events of several predictors' loggers."""

    def __init__(self, loggers: dict[str, RequestLogger], max_buffer: int = MAX_BUFFER, drain: float = 5.0):
        """``drain``: at close, how long the child may still send what its queues hold."""
        self.drain = drain
        self.configs = [_config(log) for log in loggers.values()]
        self.loggers = {name: RemoteLogger(self, i, log) for i, (name, log) in enumerate(loggers.items())}
        self._by_index = list(self.loggers.values())
        self.max_buffer = max_buffer
        self._buffer = bytearray()
        self._flush_scheduled = False
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._reported: dict[int, dict] = {}
        self._closed = False

    def __getitem__(self, predictor: str) -> RemoteLogger:
        return self.loggers[predictor]

    def get(self, predictor: str) -> RemoteLogger | None:
        return self.loggers.get(predictor)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> LoggerProcess:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "serving.request_logger.offload",
            json.dumps(self.configs),
            str(self.drain),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # off the gateway's CPU share (yield_cpu); it stops when stdin closes
        )
        ready = await asyncio.wait_for(self._process.stdout.readline(), 30)
        if not ready.startswith(b"ready"):
            raise RuntimeError(f"the request-logger process did not start: {ready[:200]!r}")
        self._reader = asyncio.create_task(self._read_reports())
        return self

    def _put(self, logger: RemoteLogger, kind, puid, body, content_type, encoding) -> bool:
        if self._process is None:
            raise RuntimeError("LoggerProcess.start() was not awaited on the running event loop")
        if self._closed or self._process.returncode is not None or self._process.stdin.is_closing():
            logger._count(dropped={CLOSED if self._closed else SEND_ERROR: 1})
            return False
        if len(self._buffer) + self._process.stdin.transport.get_write_buffer_size() > self.max_buffer:
            logger._count(dropped={QUEUE_FULL: 1})
            return False
        header = json.dumps([logger.index, kind, puid, content_type, encoding]).encode()
        self._buffer += FRAME.pack(len(header), len(body))
        self._buffer += header
        self._buffer += body
        if not self._flush_scheduled:  # one write per event-loop iteration, whatever the number of events
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._buffer and not self._process.stdin.is_closing():
            self._process.stdin.write(bytes(self._buffer))
        self._buffer.clear()

    async def _read_reports(self) -> None:
        while line := await self._process.stdout.readline():
            self._apply(json.loads(line))

    def _apply(self, report: dict) -> None:
        """The child's cumulative counts -> deltas on this process's counters."""
        for key, counts in report.items():
            index = int(key)
            before = self._reported.get(index, {"sent": 0, "dropped": {}})
            self._by_index[index]._count(
                sent=counts["sent"] - before["sent"],
                dropped={r: n - before["dropped"].get(r, 0) for r, n in counts["dropped"].items()},
            )
            self._reported[index] = counts

    async def close(self) -> None:
        """Send what is buffered, let the child drain its queues (``drain`` s), collect its last counts."""
        if self._process is None or self._closed:
            return
        self._flush()
        self._closed = True
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), self.drain + 10)
        except TimeoutError:
            self._process.kill()  # by the pid this object started
            await self._process.wait()
        await self._reader  # the last report arrives before the pipe closes

    async def __aenter__(self) -> LoggerProcess:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


# ------------------------------------------------------------------------------ the child
async def _child(configs: list[dict], drain: float) -> None:
    os.nice(NICENESS)
    yield_cpu()  # started in a session of its own
    loggers = [RequestLogger(**config).start() for config in configs]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out = sys.stdout.buffer

    last = None

    def report() -> None:
        nonlocal last
        counts = {i: {"sent": log.sent, "dropped": dict(log.dropped)} for i, log in enumerate(loggers)}
        if counts != last:
            out.write(json.dumps(counts).encode() + b"\n")
            out.flush()
            last = copy.deepcopy(counts)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            report()

    out.write(b"ready\n")
    out.flush()
    task = asyncio.create_task(reporter())
    try:
        while True:
            try:
                sizes = await reader.readexactly(FRAME.size)
            except asyncio.IncompleteReadError:
                break  # the gateway closed the pipe: drain and stop
            header_size, body_size = FRAME.unpack(sizes)
            index, kind, puid, content_type, encoding = json.loads(await reader.readexactly(header_size))
            body = await reader.readexactly(body_size)
            logger = loggers[index]
            # the same path as in-process logging (modes and the skip header were checked by the sender)
            logger._log(TYPES[kind], puid, body, content_type, content_encoding=encoding)
    finally:
        task.cancel()
        await asyncio.gather(*(log.close(drain) for log in loggers))
        report()


if __name__ == "__main__":
    from serving import aio

    aio.run(_child(json.loads(sys.argv[1]), float(sys.argv[2])))
