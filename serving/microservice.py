"""Run seldon-core's own microservice, bound to loopback.

    python -m serving.microservice serving.mlflow_server.MLFlowServer --http-port 9000 --metrics-port 6000

This is `seldon-core-microservice` (``seldon_core.microservice.main``) with the few differences
below, each a patch of a seldon-core 1.17.1 function (the version requirements.txt pins; an
upgrade must be checked against tests/serving and tests/reliability). First, the address:
seldon-core 1.17 hard-codes ``0.0.0.0`` for its gunicorn servers and has no host flag,
which is right in a pod and wrong on a laptop. Both of its REST servers (predictions and metrics)
are gunicorn applications built from ``gunicorn_utils.StandaloneApplication``; we rewrite the
host of their ``bind`` setting to ``SELDON_BIND_HOST`` (default 127.0.0.1) after seldon-core has
set it. gRPC and the Flask debug server cannot be rebound this way, so they are switched off.

To stop it, send SIGTERM to this process only, as the kubelet signals a container's PID 1
(``serving.local.processes.stop_groups`` does, then SIGKILLs the group after a grace period).
SIGTERM to its whole process group also reaches the ``multiprocessing.Manager`` that holds the
metrics; it dies first, and each gunicorn worker's exit hook (``seldon_metrics.clear()``) then
logs a ConnectionRefusedError traceback. A worker that stops normally then leaves at once, after
seldon-core's exit hook (``os._exit(0)``): tearing its interpreter down (freeing the MLflow,
pandas and scikit-learn objects; py-spy: ``gc_collect_main``) took ~3 s, which the gunicorn master
and ``down`` waited for. Its requests are finished by then (gunicorn waits for them); a worker
that fails keeps its exit code.

One more difference: JSON nested thousands of levels deep makes Flask's parser raise
RecursionError, which seldon-core turns into a 500; here it is the 400 it deserves. So is a
feedback body that is valid JSON but not an object (``false``, ``3``) or whose reward no float
holds (``1e400`` written as an integer): seldon-core hands it to protobuf's ``ParseDict``, whose
TypeError or OverflowError became a 500 (both found by tests/reliability/test_fuzz.py).

A feedback the model has counted already is not counted again: seldon-core counts the reward
(``update_reward``) before the model sees the feedback, so ``send_feedback`` first asks a model that
remembers the request ids it counted (``first_feedback``, serving/mlflow_server.py); a repeat is
answered as the first was (``send_feedback_raw``), tagged ``already_counted``, and not counted.

And three about seldon-core's metrics (``SeldonMetrics``), which keeps every counter in a
``multiprocessing.Manager`` process and pays several round trips to it per update (a py-spy
profile put them at a third of a 1-row prediction's time; bench/README.md):

- after every ``predict_raw`` and ``send_feedback_raw`` seldon-core "updates" the custom metrics
  even when the response carries none: that no-op is skipped;
- a feedback updates its two counters (count, reward) in one update instead of two;
- ``update`` is a read-modify-write of the worker's entry keyed by pid. With
  ``GUNICORN_THREADS`` > 1 two threads of one worker can interleave and one increment is lost
  (a feedback missing from ``seldon_api_model_feedback_total``); a per-process lock makes each
  update whole. Different workers have different pids, so they never touch the same entry -
  which is also why the Manager lock around each Manager call is replaced by that process's own,
  and why a worker need not read its own entry back from the Manager before each update.
"""

import os
import sys
import threading

from flask import jsonify
from seldon_core import gunicorn_utils, metrics, microservice, seldon_methods, wrapper
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


_json_to_feedback = wrapper.json_to_feedback


def _json_to_feedback_of_an_object(message_json):
    if not isinstance(message_json, dict):
        raise SeldonMicroserviceException(
            "feedback must be a JSON object with 'request', 'response' and 'reward', "
            f"got {type(message_json).__name__}",
            status_code=400,
            reason="MICROSERVICE_BAD_DATA",
        )
    try:
        return _json_to_feedback(message_json)
    except (TypeError, ValueError, OverflowError) as e:  # e.g. a reward of 10**400: no float holds it
        raise SeldonMicroserviceException(
            f"invalid feedback: {type(e).__name__}: {e}", status_code=400, reason="MICROSERVICE_BAD_DATA"
        ) from None


_handle_raw_custom_metrics = seldon_methods.handle_raw_custom_metrics


def _handle_raw_custom_metrics_if_any(msg, seldon_metrics, is_proto, method):
    if is_proto and not msg.meta.metrics:
        return  # nothing to record: skip the round trips to the Manager process
    if isinstance(msg, dict) and not (isinstance(msg.get("meta"), dict) and msg["meta"].get("metrics")):
        return
    _handle_raw_custom_metrics(msg, seldon_metrics, is_proto, method)


_metrics_init = metrics.SeldonMetrics.__init__


def _metrics_with_a_process_lock(self, *args, **kwargs):
    _metrics_init(self, *args, **kwargs)
    # seldon-core guards the Manager's dict with a Manager lock: four more round trips to another
    # process per update. Each Manager call is atomic by itself and each worker writes only its
    # own entry (keyed by pid), so what needs guarding is two threads of one worker interleaving
    # a read-modify-write - a lock inside the process does that (_update_whole).
    self._lock = threading.Lock()
    self.data = _OwnEntryRemembered(self.data)


class _OwnEntryRemembered:
    """The Manager's dict, with this process's own entry remembered in the process.

    ``update`` reads the worker's entry back from the Manager before writing it; but only this
    worker ever writes that entry, so what it wrote last *is* what the Manager holds - reading it
    from memory saves a round trip per update. Everything else goes to the Manager as before.
    """

    def __init__(self, shared):
        self._shared = shared
        self._own: dict = {}

    def get(self, key, default=None):
        return self._own[key] if key in self._own else self._shared.get(key, default)

    def __setitem__(self, key, value) -> None:
        self._shared[key] = value
        self._own[key] = value

    def __delitem__(self, key) -> None:
        self._own.pop(key, None)
        del self._shared[key]

    def __contains__(self, key) -> bool:
        return key in self._shared

    def __getitem__(self, key):
        return self._shared[key]

    def __getattr__(self, name):  # keys(), items(), copy(), ...: the Manager's
        return getattr(self._shared, name)


_update = metrics.SeldonMetrics.update
_UPDATE_LOCK = threading.Lock()  # one per worker process (created before gunicorn forks, never held then)


def _update_whole(self, custom_metrics, method):
    with _UPDATE_LOCK:
        _update(self, custom_metrics, method)


def _update_reward_once(self, reward):
    # seldon-core's own rule: a reward of 0 (or none) is not counted
    if not reward or metrics.legacy_mode:
        return
    self.update(
        [
            {"type": "COUNTER", "key": metrics.FEEDBACK_KEY, "value": 1},
            {"type": "COUNTER", "key": metrics.FEEDBACK_REWARD_KEY, "value": reward},
        ],
        metrics.FEEDBACK_METRIC_METHOD_TAG,
    )


_send_feedback = seldon_methods.send_feedback


def _send_feedback_once(user_model, request, predictive_unit_id, seldon_metrics):
    first = getattr(user_model, "first_feedback", None)
    if first is not None and not first(request):
        answer = user_model.send_feedback_raw(request)
        answer.meta.tags["already_counted"].bool_value = True
        return answer
    return _send_feedback(user_model, request, predictive_unit_id, seldon_metrics)


_worker_exit = microservice.worker_exit  # seldon-core's: clears the dying worker's metrics


def _worker_exit_without_teardown(server, worker, seldon_metrics) -> None:
    _worker_exit(server, worker, seldon_metrics=seldon_metrics)
    # gunicorn calls this hook in a `finally`, with the worker's SystemExit on its way out
    leaving = sys.exc_info()[1]
    if isinstance(leaving, SystemExit) and leaving.code in (0, None):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main() -> None:
    gunicorn_utils.StandaloneApplication.load_config = _load_config_on_host
    wrapper.get_rest_microservice = _rest_microservice_with_json_limits
    wrapper.json_to_feedback = _json_to_feedback_of_an_object
    seldon_methods.handle_raw_custom_metrics = _handle_raw_custom_metrics_if_any
    seldon_methods.send_feedback = _send_feedback_once
    metrics.SeldonMetrics.__init__ = _metrics_with_a_process_lock
    metrics.SeldonMetrics.update = _update_whole
    metrics.SeldonMetrics.update_reward = _update_reward_once
    microservice.worker_exit = _worker_exit_without_teardown
    os.environ["SELDON_DEBUG"] = "false"  # the debug server binds all interfaces
    sys.argv += ["--grpc-workers", "0"]  # the gRPC server binds all interfaces (argparse keeps the last)
    microservice.main()


if __name__ == "__main__":
    main()
