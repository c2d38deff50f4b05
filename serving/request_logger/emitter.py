"""The Seldon executor's request logger: CloudEvents posted to a URL, never in the caller's way.

What seldon-core v1.17.1's Go executor does (``executor/logger/{collector,worker,dispatcher}.go``,
``executor/predictor/predictor_process.go``), and this module does the same:

- a graph node with ``logger: {mode, url}`` logs its request (mode ``request``/``all``), its
  response (``response``/``all``) and the feedback it receives (``response``/``all``);
- without ``url`` the event goes to ``REQUEST_LOGGER_DEFAULT_ENDPOINT`` (the operator sets it
  from its own ``EXECUTOR_REQUEST_LOGGER_DEFAULT_ENDPOINT``, default ``http://default-broker``);
- a request with the header ``Seldon-Skip-Logging: true|on|1`` logs nothing;
- each event is one HTTP ``POST`` in CloudEvents 1.0 *binary* mode (cloudevents/sdk-go v1.2.0):
  the body is the payload's bytes (gzip undone), the attributes are headers (``HEADERS``), with a
  fresh UUID as ``Ce-Id`` per event and the request's puid as ``Ce-Requestid``;
- the call only enqueues: a queue of 10000 events (``--log_work_buffer_size``) drained by 10
  workers (``--logger_workers``); when the queue is full the event waits up to 2000 ms
  (``--log_write_timeout_ms``) for room, then is dropped.

Where the executor drops an event with only a log line (queue still full after the wait, a send
error, a non-2xx answer) this one also counts it: ``request_logger_events_dropped_total``
(labels deployment_name, predictor_name, model_name, reason) and ``RequestLogger.dropped``.
One deliberate difference: the executor's CloudEvents client has no timeout (a hung logger holds
its workers until the queue fills); here a send gives up after ``send_timeout`` (60 s, the
timeout of the executor's own, unused, worker client) and counts as dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from prometheus_client import Counter

from serving.encoding import BodyError, decode_body

logger = logging.getLogger("serving.request_logger")

# executor/logger/worker.go
CE_REQUEST = "io.seldon.serving.inference.request"
CE_RESPONSE = "io.seldon.serving.inference.response"
CE_FEEDBACK = "io.seldon.serving.feedback"
EVENT_TYPES = (CE_REQUEST, CE_RESPONSE, CE_FEEDBACK)
MODES = ("all", "request", "response")  # operator/apis/.../seldondeployment_types.go LoggerMode
DEFAULT_ENDPOINT_ENV = "REQUEST_LOGGER_DEFAULT_ENDPOINT"
OPERATOR_DEFAULT_ENDPOINT = "http://default-broker"  # what the operator puts in that variable
SKIP_HEADER = "Seldon-Skip-Logging"
SKIP_VALUES = ("true", "on", "1")  # executor/api/payload/metadata.go GetAsBoolean
# executor/logger/collector.go, cmd/executor/main.go
DEFAULT_QUEUE_SIZE = 10000
DEFAULT_WORKERS = 10
DEFAULT_WRITE_TIMEOUT = 2.0
DEFAULT_SEND_TIMEOUT = 60.0
# cmd/executor/main.go builds the source URL from --hostname *before* defaulting an empty one to
# POD_NAME/localhost, and the operator passes no --hostname: every v1.17.1 event says this.
EXECUTOR_SOURCE = "http://:8000/"
# The CloudEvents attributes as headers, in Go's canonical spelling (sdk-go's codec_v1 toHeaders)
HEADERS = (
    "Ce-Specversion",
    "Ce-Id",
    "Ce-Type",
    "Ce-Source",
    "Ce-Time",
    "Content-Type",
    "Ce-Modelid",
    "Ce-Requestid",
    "Ce-Inferenceservicename",
    "Ce-Namespace",
    "Ce-Endpoint",
    "Ce-Protocol",
)
# reasons an event was not delivered
QUEUE_FULL, SEND_ERROR, SEND_TIMEOUT, HTTP_STATUS, CLOSED = (
    "queue_full",
    "send_error",
    "send_timeout",
    "http_status",
    "closed",
)

DROPPED = Counter(
    "request_logger_events_dropped",
    "Request-logger CloudEvents not delivered (the Seldon executor drops these with a log line only)",
    ["deployment_name", "predictor_name", "model_name", "reason"],
)
SENT = Counter(
    "request_logger_events_sent",
    "Request-logger CloudEvents delivered (a 2xx answer)",
    ["deployment_name", "predictor_name", "model_name"],
)


def skip_logging(headers) -> bool:
    """True when the request asks not to be logged: ``Seldon-Skip-Logging`` is true, on or 1.

    ``headers``: a case-insensitive multi-mapping (aiohttp's ``request.headers``) or a plain dict.
    """
    if headers is None:
        return False
    if hasattr(headers, "getall"):
        values = headers.getall(SKIP_HEADER, [])
    else:
        values = [v for k, v in headers.items() if k.lower() == SKIP_HEADER.lower()]
    return any(str(v).lower() in SKIP_VALUES for v in values)


def default_endpoint(env=None) -> str:
    """The URL of a logger without ``url``: ``$REQUEST_LOGGER_DEFAULT_ENDPOINT`` ('' when unset)."""
    return (os.environ if env is None else env).get(DEFAULT_ENDPOINT_ENV, "")


@dataclass(frozen=True)
class LoggerSpec:
    """A graph node's ``logger`` block."""

    mode: str
    url: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"logger.mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @classmethod
    def of(cls, graph: dict) -> LoggerSpec | None:
        """The ``logger`` of a graph node (a manifest's ``graph`` mapping); None when it has none."""
        spec = graph.get("logger")
        return None if spec is None else cls(mode=spec.get("mode", ""), url=spec.get("url"))

    def resolved_url(self, env=None) -> str:
        """``url``, else the default endpoint (as ``getLogUrl`` in predictor_process.go)."""
        return self.url if self.url is not None else default_endpoint(env)

    @property
    def logs_request(self) -> bool:
        return self.mode in ("request", "all")

    @property
    def logs_response(self) -> bool:  # responses and feedback
        return self.mode in ("response", "all")


@dataclass
class _Event:
    type: str
    id: str
    puid: str
    body: bytes
    content_type: str
    content_encoding: str | None


class RequestLogger:
    """One graph node's request logger with its executor's queue and workers.

    ``log_request``/``log_response``/``log_feedback`` are plain (non-async) calls that only
    enqueue, so the caller's latency does not depend on the logger at all. Call ``start()`` on the
    running event loop before logging and ``await close()`` at the end.
    """

    def __init__(
        self,
        url: str | None,
        namespace: str,
        deployment: str,
        predictor: str,
        node: str,
        mode: str = "all",
        *,
        protocol: str = "seldon",
        source: str = EXECUTOR_SOURCE,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        workers: int = DEFAULT_WORKERS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        env=None,
    ):
        if queue_size < 1 or workers < 1:
            raise ValueError(f"queue_size and workers must be at least 1, got {queue_size}, {workers}")
        self.spec = LoggerSpec(mode=mode, url=url)
        self.url = self.spec.resolved_url(env)
        self.namespace, self.deployment, self.predictor, self.node = namespace, deployment, predictor, node
        self.protocol, self.source = protocol, source
        self.queue_size, self.workers, self.write_timeout = queue_size, workers, write_timeout
        self.send_timeout = send_timeout
        self.dropped: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self._queue: asyncio.Queue[_Event] | None = None
        self._tasks: list[asyncio.Task] = []
        self._waiting: set[asyncio.Task] = set()  # events waiting for room in a full queue
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._labels = (deployment, predictor, node)
        self._sent_metric = SENT.labels(*self._labels)

    @classmethod
    def for_graph(
        cls, graph: dict, namespace: str, deployment: str, predictor: str, **options
    ) -> RequestLogger | None:
        """The logger of a manifest's graph node (``predictor["graph"]``); None without a ``logger``."""
        spec = LoggerSpec.of(graph)
        if spec is None:
            return None
        return cls(spec.url, namespace, deployment, predictor, graph["name"], spec.mode, **options)

    @classmethod
    def for_manifest(cls, manifest: dict, **options) -> dict[str, RequestLogger]:
        """{predictor name: its logger} for every predictor whose graph node has a ``logger``.

        One queue and set of workers per predictor, as each predictor's executor has its own (the
        local stack serves single-node graphs, so the root node is the predictor's only node).
        """
        metadata, spec = manifest["metadata"], manifest["spec"]
        found = {}
        for item in spec["predictors"]:
            log = cls.for_graph(
                item["graph"],
                metadata.get("namespace") or "default",
                metadata["name"],
                item["name"],
                protocol=spec.get("protocol", "seldon"),
                **options,
            )
            if log is not None:
                found[item["name"]] = log
        return found

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RequestLogger:
        """Create the queue, the HTTP session and the workers on the running event loop."""
        if self._queue is not None:
            return self
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        # no keep-alive limit beyond the workers: each worker has at most one send in flight
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.workers))
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        return self

    async def close(self, drain: float = 5.0) -> None:
        """Stop taking events, send what is queued for up to ``drain`` seconds; count the rest as dropped."""
        if self._queue is None or self._closed:
            return
        self._closed = True
        for task in list(self._waiting):
            task.cancel()
        await asyncio.gather(*self._waiting, return_exceptions=True)
        try:
            await asyncio.wait_for(self._queue.join(), drain)
        except TimeoutError:
            pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()
            self._drop(CLOSED)
        await self._session.close()

    async def __aenter__(self) -> RequestLogger:
        return self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        """Events waiting in the queue now."""
        return 0 if self._queue is None else self._queue.qsize()

    # ------------------------------------------------------------------ the caller's side
    def log_request(self, puid: str, body: bytes, content_type: str = "application/json", **kw) -> bool:
        """Log a request the node received (modes request, all). True when an event was queued."""
        return self.spec.logs_request and self._log(CE_REQUEST, puid, body, content_type, **kw)

    def log_response(self, puid: str, body: bytes, content_type: str = "application/json", **kw) -> bool:
        """Log the node's (successful) response (modes response, all)."""
        return self.spec.logs_response and self._log(CE_RESPONSE, puid, body, content_type, **kw)

    def log_feedback(self, puid: str, body: bytes, content_type: str = "application/json", **kw) -> bool:
        """Log a Feedback the node received (modes response, all), with the feedback call's puid."""
        return self.spec.logs_response and self._log(CE_FEEDBACK, puid, body, content_type, **kw)

    def _log(
        self,
        type_: str,
        puid: str,
        body: bytes,
        content_type: str,
        headers=None,
        content_encoding: str | None = None,
    ) -> bool:
        if self._queue is None:
            raise RuntimeError("RequestLogger.start() was not called on the running event loop")
        if self._closed or skip_logging(headers):
            return False
        event = _Event(type_, str(uuid.uuid4()), puid, bytes(body), content_type, content_encoding)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            if self.write_timeout <= 0 or len(self._waiting) >= self.queue_size:
                # the executor would start one more goroutine per event; a second bound keeps the
                # waiting events (and their tasks) from growing without limit while a sink hangs
                self._drop(QUEUE_FULL)
                return False
            # the executor's goroutine waits for room; here a task does, the caller does not
            task = asyncio.create_task(self._put_later(event))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)
        return True

    async def _put_later(self, event: _Event) -> None:
        try:
            await asyncio.wait_for(self._queue.put(event), self.write_timeout)
        except TimeoutError:
            logger.warning("timed out waiting to queue log request: buffer is full (puid %s)", event.puid)
            self._drop(QUEUE_FULL)
        except asyncio.CancelledError:
            self._drop(CLOSED)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        DROPPED.labels(*self._labels, reason).inc()

    # ------------------------------------------------------------------ the workers
    def headers(self, event: _Event) -> dict[str, str]:
        """The CloudEvents binary-mode headers of ``event``, stamped with the send time."""
        return {
            "Ce-Specversion": "1.0",
            "Ce-Id": event.id,
            "Ce-Type": event.type,
            "Ce-Source": self.source,
            # Go's time.RFC3339Nano in UTC: nanoseconds without trailing zeros, "Z"
            "Ce-Time": _rfc3339nano(datetime.now(UTC)),
            "Content-Type": event.content_type,
            "Ce-Modelid": self.node,
            "Ce-Requestid": event.puid,
            "Ce-Inferenceservicename": self.deployment,
            "Ce-Namespace": self.namespace,
            "Ce-Endpoint": self.predictor,
            "Ce-Protocol": self.protocol,
        }

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._send(event)
            except asyncio.CancelledError:  # close() gave up on it mid-send
                self._drop(CLOSED)
                raise
            finally:
                self._queue.task_done()

    async def _send(self, event: _Event) -> None:
        body = event.body
        if event.content_encoding == "gzip":
            try:  # the executor undoes gzip, and only gzip, before sending (payload.DecompressBytes)
                body = decode_body(body, event.content_encoding, 1 << 30)
            except BodyError as e:
                logger.warning("request log event %s not sent: %s", event.id, e)
                self._drop(SEND_ERROR)
                return
        try:
            async with self._session.post(
                self.url,
                data=body,
                headers=self.headers(event),
                timeout=aiohttp.ClientTimeout(total=self.send_timeout),
            ) as answer:
                await answer.read()
                status = answer.status
        except TimeoutError:
            self._drop(SEND_TIMEOUT)
            return
        except (aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: a URL aiohttp cannot use
            logger.warning("failed to send cloudevent log to %r: %s: %s", self.url, type(e).__name__, e)
            self._drop(SEND_ERROR)
            return
        if 200 <= status < 300:
            self.sent += 1
            self._sent_metric.inc()
        else:
            logger.warning("request logger %s answered %s", self.url, status)
            self._drop(HTTP_STATUS)


def _rfc3339nano(t: datetime) -> str:
    fraction = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"
