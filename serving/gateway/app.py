"""The Gateway: the ingress (Istio's weighted route, the shadow's mirror), one port per predictor,
``/metrics``, ``/ready`` and the admin endpoints as aiohttp apps, and the process that serves them
(``serve``, ``main``: ``python -m serving.gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from serving import aio
from serving import deployment as sdep
from serving.gateway.config import GatewayConfig
from serving.gateway.executor import Executor
from serving.gateway.manifest import ManifestReloader, Routes
from serving.gateway.protocol import errors_as_json, json_error
from serving.gateway.router import RouterGraph
from serving.gateway.shadow import ShadowMirror
from serving.request_logger import LoggerProcess

logger = logging.getLogger("serving.gateway")


class Gateway(ManifestReloader, Executor, RouterGraph, ShadowMirror):
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
        if routes.shadow is not None:
            # started after the caller's answer is built: it is written before the mirror's first step
            self.mirror(routes.deployment, routes.shadow, service, request.headers, await request.read())
        return response

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
