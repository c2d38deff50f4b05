"""Request logging as Seldon Core v1's executor does it (``logger: {mode, url}`` on graph nodes).

``emitter``: the executor's side, CloudEvents posted through a bounded queue (``RequestLogger``);
``offload``: the same loggers in a child process (``LoggerProcess``), so sending costs the caller's
process no CPU; ``sink``: a small receiver writing them as JSON lines (``python -m serving.request_logger``).
"""

from serving.request_logger.emitter import (
    CE_FEEDBACK,
    CE_REQUEST,
    CE_RESPONSE,
    DEFAULT_ENDPOINT_ENV,
    DROPPED,
    HEADERS,
    SENT,
    LoggerSpec,
    RequestLogger,
    skip_logging,
)
from serving.request_logger.offload import LoggerProcess, RemoteLogger
from serving.request_logger.sink import Sink, documents, local_sink_ports, logger_urls, read_events

__all__ = [
    "CE_FEEDBACK",
    "CE_REQUEST",
    "CE_RESPONSE",
    "DEFAULT_ENDPOINT_ENV",
    "DROPPED",
    "HEADERS",
    "SENT",
    "LoggerProcess",
    "LoggerSpec",
    "RemoteLogger",
    "RequestLogger",
    "Sink",
    "documents",
    "local_sink_ports",
    "logger_urls",
    "read_events",
    "skip_logging",
]
