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

Run by ``serving.local`` as ``python -m serving.gateway``; the config it is given is a JSON file (see
``GatewayConfig``).

The package, one idea a module: ``config`` (GatewayConfig), ``protocol`` (Seldon's paths, headers
and error shape), ``metrics`` (the executor's histograms and the gateway's own), ``manifest`` (the
split and its reloads, the loggers it declares), ``executor`` (one predictor's call: model server,
metrics, logger), ``router`` (ROUTER graphs: route and feedback), ``shadow`` (mirroring), ``app``
(the Gateway, its aiohttp apps and the process).
"""

from serving.gateway.app import Gateway, main, serve
from serving.gateway.config import GatewayConfig
from serving.gateway.executor import Executor
from serving.gateway.manifest import ManifestReloader, Routes
from serving.gateway.metrics import (
    BUCKETS,
    CLIENT_REQUESTS,
    FINE_BUCKETS,
    GATEWAY_REQUESTS,
    SERVER_REQUESTS,
    SHADOW_SKIPPED,
)
from serving.gateway.protocol import (
    PUID_HEADER,
    ROUTE_PATH,
    ROUTING_INJECTION,
    UPSTREAM_PATH,
    GraphError,
    error_body,
    errors_as_json,
    json_error,
)
from serving.gateway.router import RouterGraph, feedback_route, parse_route
from serving.gateway.shadow import ShadowMirror

__all__ = [
    "BUCKETS",
    "CLIENT_REQUESTS",
    "FINE_BUCKETS",
    "GATEWAY_REQUESTS",
    "PUID_HEADER",
    "ROUTE_PATH",
    "ROUTING_INJECTION",
    "SERVER_REQUESTS",
    "SHADOW_SKIPPED",
    "UPSTREAM_PATH",
    "Executor",
    "Gateway",
    "GatewayConfig",
    "GraphError",
    "ManifestReloader",
    "Routes",
    "RouterGraph",
    "ShadowMirror",
    "error_body",
    "errors_as_json",
    "feedback_route",
    "json_error",
    "main",
    "parse_route",
    "serve",
]
