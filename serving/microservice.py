"""Run seldon-core's own microservice, bound to loopback.

    python -m serving.microservice serving.mlflow_server.MLFlowServer --http-port 9000 --metrics-port 6000

This is `seldon-core-microservice` (``seldon_core.microservice.main``) unchanged, with one
difference: seldon-core 1.17 hard-codes ``0.0.0.0`` for its gunicorn servers and has no host flag,
which is right in a pod and wrong on a laptop. Both of its REST servers (predictions and metrics)
are gunicorn applications built from ``gunicorn_utils.StandaloneApplication``; we rewrite the
host of their ``bind`` setting to ``SELDON_BIND_HOST`` (default 127.0.0.1) after seldon-core has
set it. gRPC and the Flask debug server cannot be rebound this way, so they are switched off.

One more difference: JSON nested thousands of levels deep makes Flask's parser raise
RecursionError, which seldon-core turns into a 500; here it is the 400 it deserves.
"""

import os
import sys

from flask import jsonify
from seldon_core import gunicorn_utils, microservice, wrapper
from seldon_core.flask_utils import SeldonMicroserviceException

BIND_HOST = os.environ.get("SELDON_BIND_HOST", "127.0.0.1")

_load_config = gunicorn_utils.StandaloneApplication.load_config


def _load_config_on_host(self) -> None:
    _load_config(self)
    self.cfg.set("bind", [_on_host(address) for address in self.cfg.bind])


def _on_host(address: str) -> str:
    host, sep, port = address.rpartition(":")
    return f"{BIND_HOST}:{port}" if sep and host in ("0.0.0.0", "", "[::]") else address


_get_rest_microservice = wrapper.get_rest_microservice


def _rest_microservice_with_json_limits(*args, **kwargs):
    app = _get_rest_microservice(*args, **kwargs)

    @app.errorhandler(RecursionError)
    def too_deep(error):
        body = SeldonMicroserviceException("request JSON is nested too deeply", status_code=400).to_dict()
        return jsonify(body), 400

    return app


def main() -> None:
    gunicorn_utils.StandaloneApplication.load_config = _load_config_on_host
    wrapper.get_rest_microservice = _rest_microservice_with_json_limits
    os.environ["SELDON_DEBUG"] = "false"  # the debug server binds all interfaces
    sys.argv += ["--grpc-workers", "0"]  # the gRPC server binds all interfaces (argparse keeps the last)
    microservice.main()


if __name__ == "__main__":
    main()
