"""A small request-logger sink: receives the executor's CloudEvents, writes them as JSON lines.

It stands in for seldon-request-logger (removed from Seldon Core in 1.14.0), whose last version
stored each event in Elasticsearch under the index ``inference-log-seldon-<ns>-<sdep>-<endpoint>``
with the request id (``Ce-Requestid``, else ``Ce-Id``) as the document id, so that a request, its
response and its feedback became one document. Here each index is a file
``<out>/inference-log-seldon-<ns>-<sdep>-<endpoint>.jsonl`` holding one line per event (the
CloudEvents attributes, every ``Ce-*`` header, the parsed body), and ``documents`` merges the
lines by request id the way the Elasticsearch upserts did.

    python -m serving.request_logger --port 8004 --out .stack/request-logs

It binds 127.0.0.1 only. An event that is not a Seldon request-logger CloudEvent (missing or
unknown attributes, a body that is not what its Content-Type says) gets a 400 naming the problem.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import signal
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from serving import aio
from serving.request_logger.emitter import CE_FEEDBACK, CE_REQUEST, CE_RESPONSE, EVENT_TYPES
from serving.schema import DNS_LABEL

logger = logging.getLogger("serving.request_logger.sink")

HOST = "127.0.0.1"
# The port serving/model-shadow.yaml's logger URL names, next to the stack's ingress 8003.
DEFAULT_PORT = 8004
LOCAL_HOSTS = ("127.0.0.1", "localhost")
MAX_BODY = 16 << 20
KIND = {CE_REQUEST: "request", CE_RESPONSE: "response", CE_FEEDBACK: "feedback"}
# the attributes every event must carry, and where the record keeps them
ATTRIBUTES = {
    "Ce-Id": "id",
    "Ce-Type": "type",
    "Ce-Source": "source",
    "Ce-Specversion": "specversion",
    "Ce-Namespace": "namespace",
    "Ce-Inferenceservicename": "inferenceservicename",
    "Ce-Endpoint": "endpoint",
}
OPTIONAL = {
    "Ce-Time": "time",
    "Ce-Requestid": "requestid",
    "Ce-Modelid": "modelid",
    "Ce-Protocol": "protocol",
}


class EventError(ValueError):
    """The POST is not a request-logger CloudEvent; the message says why (answered with a 400)."""


def index_name(namespace: str, deployment: str, endpoint: str) -> str:
    """seldon-request-logger's Elasticsearch index for one predictor of one SeldonDeployment."""
    return f"inference-log-seldon-{namespace}-{deployment}-{endpoint}"


def parse_event(headers, body: bytes) -> dict:
    """One JSON-lines record of a binary-mode CloudEvent; ``EventError`` when it is not one."""
    record = {}
    for header, key in ATTRIBUTES.items():
        value = headers.get(header, "")
        if not value:
            raise EventError(f"missing header {header}: not a Seldon request-logger CloudEvent")
        record[key] = value
    if record["specversion"] != "1.0":
        raise EventError(f"Ce-Specversion {record['specversion']!r}: this sink reads CloudEvents 1.0")
    if record["type"] not in EVENT_TYPES:
        raise EventError(f"Ce-Type {record['type']!r} is not one of {', '.join(EVENT_TYPES)}")
    for header in ("Ce-Namespace", "Ce-Inferenceservicename", "Ce-Endpoint"):
        if not DNS_LABEL.fullmatch(headers[header]):  # they name the file: no paths, no odd characters
            raise EventError(f"{header} {headers[header]!r} is not a Kubernetes name")
    for header, key in OPTIONAL.items():
        record[key] = headers.get(header, "")
    record["requestid"] = record["requestid"] or record["id"]  # seldon-request-logger's fallback
    record["kind"] = KIND[record["type"]]
    record["index"] = index_name(record["namespace"], record["inferenceservicename"], record["endpoint"])
    record["content_type"] = headers.get("Content-Type", "")
    record["received"] = datetime.now(UTC).isoformat()
    record["headers"] = {
        k: v for k, v in headers.items() if k.lower().startswith("ce-") or k == "Content-Type"
    }
    if "json" in record["content_type"].lower():
        try:
            record["body"] = json.loads(body) if body else None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EventError(
                f"the body is not JSON although Content-Type is {record['content_type']}: {e}"
            ) from None
    else:  # protobuf (gRPC) or anything else: kept exactly
        record["body_base64"] = base64.b64encode(body).decode()
    return record


class Sink:
    """The sink as an aiohttp application on 127.0.0.1; ``await start()`` returns the port."""

    def __init__(self, out: str | Path, port: int = 0):
        self.out = Path(out)
        self.port = port
        self.received = 0
        self.rejected = 0
        self._files: dict[str, object] = {}
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/{tail:.*}", self.receive)
        app.router.add_get("/health", self.health)
        return app

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            record = parse_event(request.headers, body)
        except EventError as e:
            self.rejected += 1
            return web.json_response({"error": str(e)}, status=400)
        self.write(record)
        return web.json_response({"stored": record["index"], "id": record["id"]})

    def write(self, record: dict) -> None:
        file = self._files.get(record["index"])
        if file is None:
            self.out.mkdir(parents=True, exist_ok=True)
            file = self._files[record["index"]] = (self.out / f"{record['index']}.jsonl").open("a")
        file.write(json.dumps(record) + "\n")
        file.flush()  # readers (the notebook, the tests) see every event as soon as it is answered
        self.received += 1

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"received": self.received, "rejected": self.rejected, "out": str(self.out)})

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for file in self._files.values():
            file.close()
        self._files.clear()


# ---------------------------------------------------------------------------- reading the logs
def read_events(source: str | Path | Iterable[str | Path]) -> list[dict]:
    """Every record of a sink's folder (all its ``*.jsonl``), one file, or several files."""
    if isinstance(source, (str, Path)):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"no request-logger events at {source}: is a sink writing there?")
        paths = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    else:
        paths = [Path(p) for p in source]
    records = []
    for path in paths:
        with path.open() as lines:
            records += [json.loads(line) for line in lines if line.strip()]
    return records


def documents(source) -> dict[str, dict[str, dict]]:
    """{index: {request id: {"request": record, "response": record, "feedback": record}}}: the
    events merged by request id per index, as seldon-request-logger's upserts merged them (a later
    event of the same kind replaces an earlier one, as an upsert does)."""
    merged: dict[str, dict[str, dict]] = {}
    for record in read_events(source):
        merged.setdefault(record["index"], {}).setdefault(record["requestid"], {})[record["kind"]] = record
    return merged


# ------------------------------------------------------------------------ the stack's side
def logger_urls(manifest: dict) -> dict[tuple[str, str], str | None]:
    """{(predictor, graph node): logger url or None (the default endpoint)} for every logged node."""
    found = {}

    def walk(predictor: str, node: dict) -> None:
        if node.get("logger") is not None:
            found[(predictor, node["name"])] = node["logger"].get("url")
        for child in node.get("children") or []:
            walk(predictor, child)

    for predictor in (manifest.get("spec") or {}).get("predictors") or []:
        walk(predictor["name"], predictor["graph"])
    return found


def local_sink_ports(manifest: dict) -> set[int]:
    """The ports of the loopback logger URLs in ``manifest``: where the local stack starts a sink."""
    ports = set()
    for url in logger_urls(manifest).values():
        if url:
            parts = urlsplit(url)
            if parts.hostname in LOCAL_HOSTS:
                ports.add(parts.port or 80)
    return ports


# ---------------------------------------------------------------------------------- CLI
async def serve(out: Path, port: int) -> None:
    sink = Sink(out, port)
    await sink.start()
    logger.info("request-logger sink on %s writing to %s", sink.url, out)
    print(f"request-logger sink on {sink.url} writing under {out}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sink.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving.request_logger",
        description="Receive the executor's request-logger CloudEvents on 127.0.0.1, write JSON lines.",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 = any free port"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the inference-log-*.jsonl files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    aio.run(serve(args.out, args.port))
