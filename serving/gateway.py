"""The local gateway: what Istio's weighted route and the Seldon executor do on a cluster.

On a cluster, a request to ``/seldon/<namespace>/<name>/api/v1.0/predictions`` passes the Istio
VirtualService, which picks a predictor at random by the ``traffic`` weights (one HTTP route,
weighted destinations, no header override), then that predictor's executor, which calls the model
container and records ``seldon_api_executor_*`` metrics. The operator also creates one Service per
predictor (``<sdep>-<predictor>``) that reaches that predictor only.

Locally, one asyncio process does all of it on 127.0.0.1:

- the ingress port serves ``/seldon/<ns>/<name>/api/v1.0/{predictions,feedback}``, split by the
  weights exactly as Istio does - so ``/feedback`` sent there is split at random too, which is the
  cluster's behaviour and the reason ``feedback.py`` sends feedback to the serving arm's own port;
- one port per predictor stands in for its Service: ``/api/v1.0/{predictions,feedback}``;
- ``/metrics`` on the ingress port exposes the executor's histograms with the same names, labels
  and buckets, and ``gateway_request_seconds`` (same labels, buckets from 0.1 ms) that resolves
  the sub-millisecond latencies the executor's 5 ms first bucket cannot;
- a body sent with ``Content-Encoding: gzip`` or ``deflate`` is decoded; a body that is not what
  its header says, or another coding, is a 400 naming the problem;
- the manifest is re-read when it changes (or on ``POST /admin/reload``): a new traffic split
  applies to the next request, while requests in flight finish where they were sent;
- a predictor whose graph is a ``ROUTER`` over MODEL children is served as the v1.17.1 executor
  serves it (``predictor_process.go``, ``api/util/utils.go``): the request goes to the router's
  ``/route``; its answer (a SeldonMessage - ndarray, tensor or tftensor - or a bare JSON list of
  ints; the first route counts) picks the child: ``N`` that child, ``-1`` every child (the
  first one's response is returned), ``-2`` the request itself. With
  ``SELDON_ENABLE_ROUTING_INJECTION`` in the predictor's ``svcOrchSpec.env`` the response's
  ``meta`` gets ``routing`` = {router: route, child: -1}; ``meta.requestPath`` is the child's own
  (the router's reply is dropped, as on a cluster). A feedback goes, unmodified, to the router's
  ``/send-feedback`` and then to the child its ``response.meta.routing`` names; the answer is the
  router's.

A ``shadow: true`` predictor gets no route: each ingress prediction is mirrored to it after the
caller's answer is ready, as Istio's ``mirror`` does (every request when its traffic is 0, else that
percentage); its answer is discarded, its own executor metrics and logger record it, and at most
``shadow_max_in_flight`` mirrors wait for it (the rest are counted in
``gateway_shadow_requests_skipped_total``). Graph nodes with a ``logger`` log their requests,
successful responses and feedback as the executor does (serving/request_logger), from a child
process, so a slow or dead logger never reaches the caller.

Where 1.17.1 crashes or misroutes, the gateway answers instead (docs in serving/routers):

- a route outside the children (the executor indexes ``Children[N]`` and panics): 502, since the
  router answered wrongly, not the client;
- a feedback without ``response.meta.routing`` for the router (1.17.1 sends it to every child,
  and to the router with routing None), with -2 (1.17.1 panics), or a routing that names no
  child or is not an integer: 400, and nothing is sent;
- the router gets the feedback before the child (1.17.1: children first), so a reward the router
  refuses reaches no one: the project's routers refuse -1 ("every child ran": no arm to credit)
  and a reward outside [0, 1] with a 400.

Run by ``serving.local``; the config it is given is a JSON file (see ``GatewayConfig``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from serving import aio
from serving import deployment as sdep
from serving.encoding import BodyError, decode_body
from serving.request_logger import LoggerProcess, RequestLogger

logger = logging.getLogger("serving.gateway")

# seldon-core executor/api/metric/constants.go
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
SERVER_REQUESTS = Histogram(
    "seldon_api_executor_server_requests_seconds",
    "A histogram of latencies for executor server",
    ["deployment_name", "predictor_name", "predictor_version", "service", "method", "code"],
    buckets=BUCKETS,
)
CLIENT_REQUESTS = Histogram(
    "seldon_api_executor_client_requests_seconds",
    "A histogram of latencies for executor client",
    [
        "deployment_name",
        "predictor_name",
        "predictor_version",
        "service",
        "model_name",
        "model_image",
        "model_version",
        "method",
        "code",
    ],
    buckets=BUCKETS,
)
# The executor's first bucket is 5 ms, so every sub-millisecond answer interpolates to ~2.5 ms.
# This one, with the server histogram's labels, resolves the gateway's real latencies (the
# notebook's latency figure); Seldon's histograms above stay for the dashboard.
FINE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
GATEWAY_REQUESTS = Histogram(
    "gateway_request_seconds",
    "Latency of the requests the gateway served (fine buckets)",
    ["deployment_name", "predictor_name", "predictor_version", "service", "method", "code"],
    buckets=FINE_BUCKETS,
)

# Mirrors the gateway did not send because too many were still in flight (Istio drops a mirror it
# cannot send without telling anyone; here it is counted)
SHADOW_SKIPPED = Counter(
    "gateway_shadow_requests_skipped",
    "Requests not mirrored to the shadow predictor because too many mirrors were in flight",
    ["deployment_name", "predictor_name"],
)

# executor REST service names (server side) and the model container paths it calls (client side)
UPSTREAM_PATH = {"predictions": "/predict", "feedback": "/send-feedback"}
PUID_HEADER = "Seldon-Puid"
ROUTE_PATH = "/route"
ROUTING_INJECTION = "SELDON_ENABLE_ROUTING_INJECTION"  # predictor_process.go: on when non-empty


class GraphError(Exception):
    """A request the graph cannot serve: answered with ``status`` and Seldon's error shape."""

    def __init__(self, status: int, reason: str, info: str):
        super().__init__(info)
        self.status, self.reason, self.info = status, reason, info

    def response(self) -> web.Response:
        return json_error(self.status, self.reason, self.info)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GraphError(502, "BAD_ROUTE", f"route {value!r} is not a number")
    return value


def parse_route(payload: bytes) -> int:
    """The route in a router's answer, read as ``ExtractRouteFromSeldonJson`` reads it.

    A SeldonMessage: each ndarray row's first value (or the value), a tensor's values, a
    tftensor's intVal; any other data means -1. Or a bare JSON list of ints. Only the first
    route counts; none at all (the executor indexes ``routes[0]`` and panics) is a GraphError.
    """
    try:
        message = json.loads(payload)
    except ValueError:
        raise GraphError(502, "BAD_ROUTE", f"the router's answer is not JSON: {payload[:80]!r}") from None
    if isinstance(message, list):
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in message):
            raise GraphError(502, "BAD_ROUTE", f"the router's answer {message!r:.80} is not a list of ints")
        routes = message
    elif isinstance(message, dict):
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        if "ndarray" in data:
            rows = data["ndarray"] if isinstance(data["ndarray"], list) else []
            routes = []
            for row in rows:
                if isinstance(row, list):
                    if not row:
                        raise GraphError(502, "BAD_ROUTE", "the router answered an empty ndarray row")
                    row = row[0]
                routes.append(int(_number(row)))
        elif "tensor" in data and isinstance(data["tensor"], dict):
            routes = [int(_number(v)) for v in data["tensor"].get("values") or []]
        elif "tftensor" in data and isinstance(data["tftensor"], dict):
            tf = data["tftensor"]
            routes = [int(_number(v)) for v in tf.get("intVal", tf.get("int_val")) or []]
        else:
            routes = [-1]
    else:
        raise GraphError(502, "BAD_ROUTE", f"the router's answer {message!r:.80} is no route")
    if not routes:
        raise GraphError(502, "BAD_ROUTE", "the router answered no route")
    return routes[0]


@dataclass
class GatewayConfig:
    manifest: str
    upstreams: dict[str, str]  # predictor name -> model server base URL
    predictor_ports: dict[str, int]  # predictor name -> its "Service" port
    ingress_port: int = 8003
    host: str = "127.0.0.1"
    model_image: str = "mlflow-seldon/mlflowserver:local"
    max_body_bytes: int = 1 << 20
    upstream_timeout: float = 5.0  # seconds; Seldon's default rest-timeout is 5000 ms
    reload_interval: float = 0.5
    seed: int | None = None
    shadow_max_in_flight: int = 256  # mirrors waiting for the shadow beyond this are skipped and counted

    @classmethod
    def read(cls, path: str | os.PathLike) -> GatewayConfig:
        return cls(**json.loads(Path(path).read_text()))

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))


def error_body(status: int, reason: str, info: str) -> dict:
    """Seldon's error shape, as the executor and the Python wrapper return it."""
    return {"status": {"code": status, "info": info, "reason": reason, "status": "FAILURE"}}


def json_error(status: int, reason: str, info: str) -> web.Response:
    return web.json_response(error_body(status, reason, info), status=status)


@dataclass
class Routes:
    deployment: sdep.Deployment
    names: list[str] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    shadow: sdep.Predictor | None = None  # gets a mirror of the ingress's predictions, never a route

    @classmethod
    def of(cls, deployment: sdep.Deployment) -> Routes:
        live = [p for p in deployment.predictors if p.traffic > 0 and not p.shadow]
        shadow = next((p for p in deployment.predictors if p.shadow), None)
        return cls(deployment, [p.name for p in live], [p.traffic for p in live], shadow)


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.random = random.Random(config.seed)
        self.random_ids = random.Random()  # request ids: never seeded, unlike the traffic split
        self.routes = Routes.of(sdep.load(config.manifest))
        self._check_upstreams(self.routes.deployment)
        self.mtime = os.stat(config.manifest).st_mtime_ns
        self.reload_error: str | None = None
        self.reloads = 0
        self.session: aiohttp.ClientSession | None = None  # created in start(), on the event loop
        self.timeout = aiohttp.ClientTimeout(total=config.upstream_timeout)
        # Histogram.labels() takes a lock and builds a key on every call; the label sets are few,
        # so each child is kept once (a profile put the lookups at a few % of the gateway's CPU)
        self._server_children: dict[tuple, tuple] = {}
        self._client_children: dict[tuple, object] = {}
        # the graph nodes' request loggers, sending from a child process (serving/request_logger)
        self.hub: LoggerProcess | None = None
        self.mirrors: set[asyncio.Task] = set()  # in flight to the shadow
        self.mirrored = self.mirror_skipped = 0

    # ---------------------------------------------------------------- configuration
    def _check_upstreams(self, deployment: sdep.Deployment) -> None:
        missing = [p.name for p in deployment.servers if p.name not in self.config.upstreams]
        if missing:
            raise sdep.DeploymentError(
                f"{deployment.source}: predictors {missing} have no running model server; "
                "adding predictors needs `python -m serving.local down` then `up`"
            )

    async def reload(self) -> dict:
        """Re-read the manifest; on any error keep serving the current split and report why."""
        path = self.config.manifest
        try:
            mtime = os.stat(path).st_mtime_ns
            # validation reads the CRD schema: keep it off the event loop
            deployment = await asyncio.get_running_loop().run_in_executor(None, sdep.load, path)
            self._check_upstreams(deployment)
            current = self.routes.deployment
            if deployment.name != current.name or deployment.namespace != current.namespace:
                raise sdep.DeploymentError(f"{path}: renaming the deployment needs `down` then `up`")
        except (OSError, sdep.DeploymentError) as e:
            self.reload_error = str(e)
            logger.error("manifest not applied, still serving %s: %s", self.routes.deployment.traffic, e)
            return {"applied": False, "error": self.reload_error, "traffic": self.routes.deployment.traffic}
        self.mtime = mtime
        await self._start_loggers(deployment)
        self.routes = Routes.of(deployment)  # one assignment: requests in flight keep their arm
        self.reload_error = None
        self.reloads += 1
        logger.info("applied %s: traffic %s", path, deployment.traffic)
        return {"applied": True, "traffic": deployment.traffic}

    async def watch_manifest(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval)
            try:
                mtime = os.stat(self.config.manifest).st_mtime_ns
            except OSError:
                continue
            if mtime != self.mtime:
                await self.reload()

    # ---------------------------------------------------------------- proxying
    async def forward(self, request: web.Request, predictor: sdep.Predictor, service: str) -> web.Response:
        start = time.perf_counter()
        deployment = self.routes.deployment
        body = await request.read()
        response = await self._call_model(request.headers, body, deployment, predictor, service)
        self._observe(deployment, predictor, service, request.method, response.status, start)
        return response

    def _observe(self, deployment, predictor, service: str, method: str, status: int, start: float) -> None:
        """The executor's server histogram (and the fine one) for one request ``predictor`` served."""
        seconds = time.perf_counter() - start
        key = (deployment.name, predictor.name, predictor.version, service, method, status)
        children = self._server_children.get(key)
        if children is None:
            labels = (*key[:5], str(key[5]))
            children = self._server_children[key] = (
                SERVER_REQUESTS.labels(*labels),
                GATEWAY_REQUESTS.labels(*labels),
            )
        children[0].observe(seconds)
        children[1].observe(seconds)

    def _client_metric(self, deployment, predictor, version, service, node, method, status):
        key = (deployment, predictor, version, service, node, method, status)
        child = self._client_children.get(key)
        if child is None:
            image, _, tag = self.config.model_image.partition(":")
            child = self._client_children[key] = CLIENT_REQUESTS.labels(
                deployment, predictor, version, service, node, image, tag, method, str(status)
            )
        return child

    async def _call_model(self, request_headers, body: bytes, deployment, predictor, service) -> web.Response:
        if "Content-Encoding" in request_headers:
            try:
                body = decode_body(body, request_headers["Content-Encoding"], self.config.max_body_bytes)
            except BodyError as e:
                return json_error(e.status, e.reason, str(e))
        # a fresh request id, as the executor makes one (random bits are cheaper than uuid4())
        puid = request_headers.get(PUID_HEADER) or str(
            uuid.UUID(int=self.random_ids.getrandbits(128), version=4)
        )
        headers = {"Content-Type": request_headers.get("Content-Type", "application/json"), PUID_HEADER: puid}
        # the node's request logger (predictor_process.go): the request (or feedback) as received,
        # the response on success only; queued for the logger process, never awaited
        log = self.hub.get(predictor.name) if self.hub is not None else None
        if log is not None:
            if service == "feedback":
                log.log_feedback(puid, body, headers["Content-Type"], headers=request_headers)
            else:
                log.log_request(puid, body, headers["Content-Type"], headers=request_headers)
        try:
            if predictor.children:
                status, payload, content_type = await self._call_graph(
                    deployment, predictor, service, body, headers
                )
            else:
                status, payload, content_type = await self._upstream(
                    deployment, predictor, predictor, UPSTREAM_PATH[service], body, headers
                )
        except GraphError as e:
            response = e.response()
            response.headers[PUID_HEADER] = puid
            return response
        if log is not None and service == "predictions" and 200 <= status < 300:
            log.log_response(puid, payload, content_type, headers=request_headers)
        return web.Response(
            body=payload, status=status, headers={"Content-Type": content_type, PUID_HEADER: puid}
        )

    async def _upstream(self, deployment, predictor, server, path: str, body: bytes, headers: dict):
        """POST ``body`` to graph node ``server``'s ``path``: (status, payload, content type).

        ``server`` is the predictor itself (its root node) or a router's child; an upstream that
        is down or too slow is a GraphError (503, 504).
        """
        url = self.config.upstreams[server.name] + path
        start = time.perf_counter()
        try:
            async with self.session.post(url, data=body, headers=headers, timeout=self.timeout) as upstream:
                payload = await upstream.read()
                status, content_type = (
                    upstream.status,
                    upstream.headers.get("Content-Type", "application/json"),
                )
        except TimeoutError:
            raise GraphError(
                504,
                "UPSTREAM_TIMEOUT",
                f"predictor {predictor.name!r} ({_kind(server)} {server.node!r}) did not answer within "
                f"{self.config.upstream_timeout:g} s",
            ) from None
        except aiohttp.ClientError as e:
            raise GraphError(
                503,
                "UPSTREAM_UNAVAILABLE",
                f"predictor {predictor.name!r} ({_kind(server)} {server.node!r}) is unavailable: "
                f"{type(e).__name__}",
            ) from None
        self._client_metric(
            deployment.name, predictor.name, predictor.version, path, server.node, "POST", status
        ).observe(time.perf_counter() - start)
        if status >= 500:
            # the model container failed; the executor reports it without leaking a traceback page
            logger.error("%s %s answered %s: %s", _kind(server), server.node, status, payload[:500])
        return status, payload, content_type

    # ---------------------------------------------------------------- ROUTER graphs
    async def _call_graph(self, deployment, predictor, service, body: bytes, headers: dict):
        if service == "feedback":
            return await self._graph_feedback(deployment, predictor, body, headers)
        status, payload, content_type = await self._upstream(
            deployment, predictor, predictor, ROUTE_PATH, body, headers
        )
        if status != 200:
            return status, payload, content_type  # the router's own error (a 400 for bad JSON, ...)
        route = parse_route(payload)
        children = predictor.children
        if route == -2:  # the executor returns the request as the response
            status, payload, content_type = 200, body, headers["Content-Type"]
            called = ()
        elif route == -1:  # every child, in parallel; the first one's response
            answers = await asyncio.gather(
                *(self._upstream(deployment, predictor, c, "/predict", body, headers) for c in children)
            )
            status, payload, content_type = next((a for a in answers if a[0] != 200), answers[0])
            called = children
        elif 0 <= route < len(children):
            child = children[route]
            status, payload, content_type = await self._upstream(
                deployment, predictor, child, "/predict", body, headers
            )
            called = (child,)
        else:
            raise GraphError(
                502,
                "BAD_ROUTE",
                f"router {predictor.node!r} chose route {route}; it has {len(children)} children "
                f"(0..{len(children) - 1}), -1 (all) or -2 (none)",
            )
        if status == 200 and predictor.orchestrator_env.get(ROUTING_INJECTION):
            payload = _with_routing(payload, {predictor.node: route, **{c.node: -1 for c in called}})
        return status, payload, content_type

    async def _graph_feedback(self, deployment, predictor, body: bytes, headers: dict):
        route = feedback_route(body, predictor)
        status, payload, content_type = await self._upstream(
            deployment, predictor, predictor, UPSTREAM_PATH["feedback"], body, headers
        )
        if status != 200:  # the router refused it (a reward outside [0, 1], ...): no child gets it
            return status, payload, content_type
        children = predictor.children if route == -1 else (predictor.children[route],)
        answers = await asyncio.gather(
            *(
                self._upstream(deployment, predictor, c, UPSTREAM_PATH["feedback"], body, headers)
                for c in children
            )
        )
        failed = next((a for a in answers if a[0] != 200), None)
        if failed is not None:
            info = failed[1][:300].decode(errors="replace")
            raise GraphError(
                502 if failed[0] >= 500 else failed[0],
                "CHILD_FEEDBACK_FAILED",
                f"router {predictor.node!r} recorded the reward, a child answered {failed[0]}: {info}",
            )
        return status, payload, content_type

    # ---------------------------------------------------------------- handlers
    async def ingress(self, request: web.Request) -> web.Response:
        deployment = self.routes.deployment
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if (ns, name) != (deployment.namespace, deployment.name):
            return json_error(
                404,
                "NOT_FOUND",
                f"no SeldonDeployment {name!r} in namespace {ns!r}; "
                f"this gateway serves {deployment.ingress_prefix}",
            )
        routes = self.routes
        if not routes.names:
            return json_error(503, "NO_TRAFFIC", "every predictor has traffic 0")
        chosen = self.random.choices(routes.names, weights=routes.weights)[0]
        service = request.match_info["service"]
        response = await self.forward(request, routes.deployment.predictor(chosen), service)
        if routes.shadow is not None and service == "predictions":
            # started after the caller's answer is built: it is written before the mirror's first step
            self.mirror(routes.deployment, routes.shadow, request.headers, await request.read())
        return response

    # ---------------------------------------------------------------- shadow
    def mirror(self, deployment, shadow: sdep.Predictor, headers, body: bytes) -> None:
        """Send a copy of a prediction to the shadow predictor, as Istio's ``mirror`` does: fire and
        forget (the answer is discarded), every request when the shadow's traffic is 0, else that
        percentage. The shadow's executor is stood in for as any other's: its own metrics
        (predictor_name = the shadow) and logger, the caller's ``Seldon-Puid`` or a puid of its own.

        Only predictions are mirrored: a feedback through the ingress names the main arm's
        response, and feedback.py sends each arm's feedback to that arm's own port.
        """
        if shadow.traffic and self.random_ids.random() * 100 >= shadow.traffic:
            return
        if len(self.mirrors) >= self.config.shadow_max_in_flight:
            # a slow or dead shadow must not pile up tasks (memory, CPU) in the caller's gateway
            self.mirror_skipped += 1
            SHADOW_SKIPPED.labels(deployment.name, shadow.name).inc()
            return
        self.mirrored += 1
        task = asyncio.create_task(self._mirror(deployment, shadow, headers, body))
        self.mirrors.add(task)
        task.add_done_callback(self.mirrors.discard)

    async def _mirror(self, deployment, shadow: sdep.Predictor, headers, body: bytes) -> None:
        start = time.perf_counter()
        try:
            response = await self._call_model(headers, body, deployment, shadow, "predictions")
        except Exception:  # nothing of the shadow's may reach the caller or the event loop's log spam
            logger.exception("mirror to shadow %s failed", shadow.name)
            return
        self._observe(deployment, shadow, "predictions", "POST", response.status, start)

    def predictor_handler(self, predictor_name: str):
        async def handle(request: web.Request) -> web.Response:
            deployment = self.routes.deployment
            try:
                predictor = deployment.predictor(predictor_name)
            except KeyError:
                return json_error(
                    404, "NOT_FOUND", f"predictor {predictor_name!r} is no longer in {deployment.name}"
                )
            return await self.forward(request, predictor, request.match_info["service"])

        return handle

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def status(self, request: web.Request) -> web.Response:
        deployment = self.routes.deployment
        return web.json_response(
            {
                "deployment": deployment.name,
                "namespace": deployment.namespace,
                "manifest": self.config.manifest,
                "traffic": deployment.traffic,
                "reloads": self.reloads,
                "reload_error": self.reload_error,
                "shadow": None
                if self.routes.shadow is None
                else {
                    "predictor": self.routes.shadow.name,
                    "mirrored": self.mirrored,
                    "skipped": self.mirror_skipped,
                    "in_flight": len(self.mirrors),
                },
                "request_logger": None
                if self.hub is None
                else {
                    name: {"sent": log.sent, "dropped": dict(log.dropped)}
                    for name, log in self.hub.loggers.items()
                },
            }
        )

    async def reload_handler(self, request: web.Request) -> web.Response:
        result = await self.reload()
        return web.json_response(result, status=200 if result["applied"] else 409)

    # ---------------------------------------------------------------- apps
    def ingress_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[errors_as_json])
        app.router.add_post(
            "/seldon/{namespace}/{name}/api/v1.0/{service:predictions|feedback}", self.ingress
        )
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/admin/status", self.status)
        app.router.add_post("/admin/reload", self.reload_handler)
        return app

    def predictor_app(self, predictor_name: str) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[errors_as_json])
        app.router.add_post(
            "/api/v1.0/{service:predictions|feedback}", self.predictor_handler(predictor_name)
        )
        app.router.add_get("/ready", self.ready)
        return app

    async def _start_loggers(self, deployment: sdep.Deployment) -> None:
        """Run the manifest's request loggers (a new logger process when their specs changed)."""
        loggers = RequestLogger.for_manifest(deployment.manifest)
        old = self.hub
        if (old.configs if old else []) == (LoggerProcess(loggers).configs if loggers else []):
            return
        self.hub = await LoggerProcess(loggers).start() if loggers else None
        if old is not None:
            asyncio.create_task(old.close())  # it sends what it holds; new events go to the new one

    async def close(self) -> None:
        """At shutdown: the loggers send what they hold (the mirrors in flight are abandoned)."""
        for task in list(self.mirrors):
            task.cancel()
        if self.hub is not None:
            await self.hub.close()

    async def start(self) -> list[web.AppRunner]:
        await self._start_loggers(self.routes.deployment)
        # keep-alive connections to the model servers (gunicorn's threaded worker keeps them open
        # 2 s; dropping ours after 1.5 s means a request is never written to one it is closing)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=1.5),
            auto_decompress=False,
        )
        runners = []
        apps = [(self.ingress_app(), self.config.ingress_port)] + [
            (self.predictor_app(name), port) for name, port in self.config.predictor_ports.items()
        ]
        for app, port in apps:
            runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
            await runner.setup()
            await web.TCPSite(runner, self.config.host, port, backlog=1024).start()
            runners.append(runner)
        return runners


def _kind(server: sdep.Predictor) -> str:
    return "router" if server.children else "model"


def _with_routing(payload: bytes, routing: dict) -> bytes:
    """The response with ``meta.routing`` set, only when it has a ``meta`` (as the executor does)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(message, dict) and isinstance(message.get("meta"), dict):
        message["meta"]["routing"] = routing
        return json.dumps(message, separators=(",", ":")).encode()
    return payload


def feedback_route(body: bytes, predictor: sdep.Predictor) -> int:
    """The child a feedback is for: ``response.meta.routing[<router node>]``; a GraphError (400) when
    it names none (1.17.1 sends a feedback without routing to every child, and panics on -2)."""
    node, n = predictor.node, len(predictor.children)
    try:
        feedback = json.loads(body)
    except ValueError as e:
        raise GraphError(400, "BAD_FEEDBACK", f"the feedback is not JSON: {e}") from None
    response = feedback.get("response") if isinstance(feedback, dict) else None
    meta = response.get("meta") if isinstance(response, dict) else None
    routing = meta.get("routing") if isinstance(meta, dict) else None
    if not isinstance(routing, dict) or node not in routing:
        raise GraphError(
            400,
            "NO_ROUTING",
            f"the feedback's response.meta.routing names no route for router {node!r}: send back the "
            "prediction's response as it came (routing injection is on for this predictor only if its "
            f"svcOrchSpec.env sets {ROUTING_INJECTION})",
        )
    route = routing[node]
    if isinstance(route, bool) or not isinstance(route, int) or not -1 <= route < n:
        raise GraphError(
            400,
            "BAD_ROUTING",
            f"response.meta.routing[{node!r}] is {route!r}: a child index 0..{n - 1} (or -1: every child)",
        )
    return route


@web.middleware
async def errors_as_json(request: web.Request, handler):
    """Every error the gateway itself raises (404, 405, 413, ...) in Seldon's JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        info = {
            404: f"no route for {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: f"request body larger than {request.app._client_max_size} bytes",
        }.get(e.status, e.reason)
        return json_error(e.status, e.reason.upper().replace(" ", "_"), info)


async def serve(config: GatewayConfig) -> None:
    gateway = Gateway(config)
    await gateway.start()
    logger.info(
        "gateway on http://%s:%d%s (split %s); predictors on %s",
        config.host,
        config.ingress_port,
        gateway.routes.deployment.ingress_prefix,
        gateway.routes.deployment.traffic,
        config.predictor_ports,
    )
    # SIGTERM (the supervisor's stop): let the request loggers send what they hold, then exit
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    watcher = asyncio.create_task(gateway.watch_manifest())
    await stopping.wait()
    watcher.cancel()
    await gateway.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="The local Seldon gateway (started by serving.local).")
    parser.add_argument("--config", required=True, help="gateway config JSON written by serving.local")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    try:
        aio.run(serve(GatewayConfig.read(args.config)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
