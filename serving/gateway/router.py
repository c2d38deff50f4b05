"""ROUTER graphs as the v1.17.1 executor serves them: the route read from the router's answer, the
chosen child (or every child, or none) called, the routing injected; a feedback sent to the router,
then to the child its routing names."""

from __future__ import annotations

import asyncio
import json

from serving import deployment as sdep
from serving.gateway.protocol import ROUTE_PATH, ROUTING_INJECTION, UPSTREAM_PATH, GraphError


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


class RouterGraph:
    """The Gateway's ROUTER predictors: expects ``_upstream`` (Executor)."""

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
            # 1.17.1 indexes Children[route] and panics. A 502, not a 4xx: the request was valid and
            # the router's answer is what the graph cannot run (a fault of the router or of the
            # graph, which a caller cannot fix by changing its request, and which monitoring must see)
            raise GraphError(
                502,
                "BAD_ROUTE",
                f"router {predictor.node!r} chose route {route}; it has {len(children)} children "
                f"(0..{len(children) - 1}), -1 (all) or -2 (none): the router's answer is at fault, "
                "not the request",
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
