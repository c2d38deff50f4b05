"""One predictor's executor: the call to its model server (or its ROUTER graph, serving.gateway.router),
with the executor's metrics, the request id and the node's request logger.

An upstream that refused a connection (its process is gone, or restarting) is not called again until
its readiness probe (the manifest's ``readinessProbe``) answers: meanwhile its calls get a 503 naming
the predictor at once, as a Service has no endpoint until its pod is ready. Without that, a restarted
model server whose port is open but whose model is still loading held each call until the upstream
timeout, a 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import aiohttp
from aiohttp import web

from serving import deployment as sdep
from serving.encoding import BodyError, decode_body
from serving.gateway.metrics import CLIENT_REQUESTS, GATEWAY_REQUESTS, SERVER_REQUESTS
from serving.gateway.protocol import PUID_HEADER, UPSTREAM_PATH, GraphError, json_error

logger = logging.getLogger("serving.gateway")


class Executor:
    """The Gateway's calls upstream: expects ``config``, ``routes``, ``session``, ``timeout``,
    ``random_ids``, ``hub``, the metric caches (set by ``Gateway.__init__``) and ``_call_graph``
    (RouterGraph)."""

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
        base = self.config.upstreams[server.name]
        if server.name in self.unready:
            raise GraphError(
                503,
                "UPSTREAM_NOT_READY",
                f"predictor {predictor.name!r} ({_kind(server)} {server.node!r}) is not ready: "
                f"waiting for its readiness probe ({server.readiness.path})",
            )
        url = base + path
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
            if isinstance(e, aiohttp.ClientConnectorError) and server.name not in self.unready:
                # nothing listens: not ready until its readiness probe answers
                self.unready[server.name] = asyncio.create_task(self._probe_until_ready(server, base))
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

    @property
    def unready(self) -> dict[str, asyncio.Task]:
        """Upstreams that refused a connection, until their readiness probe answers: name -> probe."""
        return self.__dict__.setdefault("_unready", {})

    async def _probe_until_ready(self, server: sdep.Predictor, base: str) -> None:
        """Probe at once (a refusal can be a blip), then every period, as the kubelet probes."""
        probe = server.readiness
        try:
            while self.config.upstreams.get(server.name) == base and not self.session.closed:
                try:
                    timeout = aiohttp.ClientTimeout(total=probe.timeout)
                    async with self.session.get(base + probe.path, timeout=timeout) as answer:
                        if answer.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(probe.period)
        finally:
            self.unready.pop(server.name, None)


def _kind(server: sdep.Predictor) -> str:
    return "router" if server.children else "model"
