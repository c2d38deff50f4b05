"""Seldon's REST protocol as the executor speaks it: the model containers' paths, the request-id
header, and the error shape every failure is answered in."""

from aiohttp import web

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


def error_body(status: int, reason: str, info: str) -> dict:
    """Seldon's error shape, as the executor and the Python wrapper return it."""
    return {"status": {"code": status, "info": info, "reason": reason, "status": "FAILURE"}}


def json_error(status: int, reason: str, info: str) -> web.Response:
    return web.json_response(error_body(status, reason, info), status=status)


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
