"""The model server: what Seldon's prepackaged MLFLOW_SERVER does, plus input checks.

Run by the real seldon-core microservice (see ``serving/microservice.py``):

    python -m serving.microservice serving.mlflow_server.MLFlowServer \
        --parameters '[{"name": "model_uri", "value": "models:/wines-classifier@a", "type": "STRING"}]'

Like upstream (servers/mlflowserver/MLFlowServer.py) it loads the MLflow pyfunc from
``model_uri`` and predicts on a DataFrame built with the request's feature names. Unlike upstream,
it checks every request against the model's signature first and answers 400 with a message that
names the problem (wrong feature count, unknown or missing names, non-numeric values, NaN or
infinity, an empty batch) instead of a 500 from deep inside pandas or MLflow.

Speed (measured in bench/, profiled with py-spy): once a request has passed those checks,
MLflow's ``pyfunc.predict`` would enforce the same signature again column by column, and
scikit-learn would validate the DataFrame again (names, dtypes) - together about 85% of the
model server's own time per 1-row request. For a plain scikit-learn model whose signature is all
``double`` we therefore call the estimator itself on the float64 array we built, in signature
order (``_direct_predictor``); any other model goes through ``pyfunc.predict`` as before.

Feedback is counted once per request id: a feedback whose id (the ``Seldon-Puid`` header, which
the executor sets on every call; else the messages' ``meta.puid``) was counted already is answered
as the first was and not counted again (``first_feedback``; serving/microservice.py asks it before
seldon-core counts). So a client may resend a feedback whose answer it never got - the replay does,
to an arm's own endpoint, when a gateway kill cuts the answer off. The memory is this process's
(one gunicorn worker, as serving/model-a-b.yaml runs it): with several workers or replicas, a resend
that reaches another one is counted by it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import flask
import numpy as np
import pandas as pd
from seldon_core.flask_utils import SeldonMicroserviceException
from seldon_core.proto import prediction_pb2
from seldon_core.user_model import SeldonComponent
from seldon_core.utils import construct_response_json, get_request_path

logger = logging.getLogger(__name__)

# URIs that MLflow resolves itself; anything else goes through seldon-core's Storage (gs://, s3://,
# local folders), as the prepackaged server does after its rclone init container.
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
PUID_HEADER = "Seldon-Puid"  # the request id the executor sends with every call
# How many request ids of counted feedback one model server remembers (about 170 bytes each:
# 65,536 take ~11 MB). A resend comes within the replay's deadline of the first (serving/replay.py:
# 30 s); this model server answered at most ~1,800 requests/s here (bench/results.json, 8 in
# flight), so the ids of the last 36 s of feedback at that pace are still known.
FEEDBACK_IDS_REMEMBERED = 65_536


class RecentIds:
    """The last ``size`` ids seen, the oldest forgotten first (an LRU: seeing an id again makes it
    recent). Thread-safe: gunicorn's threads share one model."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, id_: str) -> bool:
        """True the first time ``id_`` is seen while remembered; remembers it."""
        with self._lock:
            if id_ in self._ids:
                self._ids.move_to_end(id_)
                return False
            self._ids[id_] = None
            if len(self._ids) > self.size:
                self._ids.popitem(last=False)
            return True

    def __len__(self) -> int:
        return len(self._ids)


class BadRequest(SeldonMicroserviceException):
    """A request the model cannot answer: HTTP 400 with Seldon's error body."""

    def __init__(self, message: str):
        super().__init__(message, status_code=400, reason="MICROSERVICE_BAD_DATA")


class MLFlowServer(SeldonComponent):
    def __init__(self, model_uri: str):
        super().__init__()
        self.model_uri = model_uri
        self.ready = False
        self.counted_feedback = RecentIds(FEEDBACK_IDS_REMEMBERED)
        if int(os.environ.get("GUNICORN_WORKERS", "1")) > 1:
            logger.warning(
                "GUNICORN_WORKERS > 1: each worker remembers the feedback it counted, so a resent "
                "feedback that reaches another worker is counted again"
            )

    def load(self) -> None:
        from mlflow import pyfunc  # imported here: only the serving worker needs MLflow

        if self.model_uri.startswith(MLFLOW_SCHEMES):
            local = self.model_uri
        else:
            from seldon_core import Storage

            local = Storage.download(self.model_uri)
        logger.info("loading MLflow model from %s", self.model_uri)
        self._model = pyfunc.load_model(local)
        schema = self._model.metadata.get_input_schema()
        if schema is None or not schema.has_input_names():
            raise RuntimeError(f"{self.model_uri}: the model has no named input signature")
        self.feature_names = list(schema.input_names())
        self._column_index = {name: i for i, name in enumerate(self.feature_names)}
        self._direct = self._direct_predictor(schema)
        logger.info(
            "predicting with %s", "the scikit-learn estimator directly" if self._direct else "pyfunc.predict"
        )
        self.ready = True

    def _direct_predictor(self, schema) -> Callable[[np.ndarray], Any] | None:
        """The estimator's own predict, when calling it is exactly what pyfunc would do; else None.

        That holds for the ``sklearn`` flavor whose pyfunc calls ``predict``, whose signature is
        all ``double`` (pyfunc would cast our float64 values to float64) and whose estimator, if
        it knows feature names, knows the signature's names in the signature's order.
        """
        from mlflow.types import DataType

        flavors = self._model.metadata.flavors
        if (
            "sklearn" not in flavors
            or flavors.get("python_function", {}).get("predict_fn", "predict") != "predict"
        ):
            return None
        if any(column.type != DataType.double for column in schema.inputs):
            return None
        estimator = self._model.get_raw_model()
        fitted_names = getattr(estimator, "feature_names_in_", None)
        if fitted_names is not None and list(fitted_names) != self.feature_names:
            return None
        if fitted_names is not None:
            # we hand it an array whose columns we ordered by name ourselves (request_values), so
            # scikit-learn's "X does not have valid feature names" warning would be noise
            warnings.filterwarnings(
                "ignore", message="X does not have valid feature names", category=UserWarning
            )
        return estimator.predict

    # Seldon calls predict_raw with the whole request, before its own (500-prone) parsing.
    def predict_raw(self, request: Any) -> dict:
        if not self.ready:
            raise SeldonMicroserviceException(
                "model not loaded yet", status_code=503, reason="MICROSERVICE_NOT_READY"
            )
        values = self.request_values(request)
        if self._direct is not None:
            # column-major, as pandas hands it to scikit-learn: the same order of floating-point
            # sums, so a batch gets bit-identical answers (a 1-row array is both layouts already)
            result = self._direct(np.asfortranarray(values))
        else:
            result = self._model.predict(pd.DataFrame(values, columns=self.feature_names))
        return construct_response_json(self, False, request, np.asarray(result, dtype=float))

    def request_frame(self, request: Any) -> pd.DataFrame:
        """Validate a SeldonMessage into a DataFrame with the signature's columns, in its order."""
        return pd.DataFrame(self.request_values(request), columns=self.feature_names)

    def request_values(self, request: Any) -> np.ndarray:
        """Validate a SeldonMessage (``ndarray`` or ``tensor``) into a float64 array in signature order."""
        if not isinstance(request, dict):
            raise BadRequest("the request must be a JSON object with a 'data' field")
        if not isinstance(request.get("meta", {}), dict):
            raise BadRequest("'meta' must be an object")
        data = request.get("data")
        if not isinstance(data, dict):
            raise BadRequest("the request needs a 'data' object holding 'ndarray' or 'tensor'")
        rows = _rows(data)
        names = data.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest("'names' must be a list of feature names")

        n = len(self.feature_names)
        if not rows:
            raise BadRequest("empty batch: send at least one row")
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                raise BadRequest(f"row {i} is not a list: each row holds the {n} feature values")
            if len(row) != n:
                raise BadRequest(
                    f"row {i} has {len(row)} values, the model expects {n} features: {self.feature_names}"
                )
            for j, value in enumerate(row):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise BadRequest(f"row {i}, {self._label(names, j)!r}: {_short(value)} is not a number")
                try:
                    finite = math.isfinite(value)
                except OverflowError:  # JSON integers are unbounded; past float64's range this raises
                    raise BadRequest(
                        f"row {i}, {self._label(names, j)!r}: {_short(value)} is too large for a float"
                    ) from None
                if not finite:
                    raise BadRequest(f"row {i}, {self._label(names, j)!r}: {value} is not a finite number")

        values = np.asarray(rows, dtype="float64")
        if not names or names == self.feature_names:  # like upstream: without names, signature order
            return values
        unknown = [name for name in names if name not in self._column_index]
        missing = [name for name in self.feature_names if name not in names]
        if unknown or missing or len(names) != n:
            raise BadRequest(
                f"feature names do not match the model's signature: "
                f"unknown {unknown}, missing {missing}; expected {self.feature_names}"
            )
        return values[:, [names.index(name) for name in self.feature_names]]

    def _label(self, names: list, j: int) -> str:
        # without names, values are taken in signature order: name the feature that position means
        return names[j] if j < len(names) else self.feature_names[j]

    def health_status(self) -> dict:
        if not self.ready:
            raise SeldonMicroserviceException(
                "model not loaded yet", status_code=503, reason="MICROSERVICE_NOT_READY"
            )
        return {"model_uri": self.model_uri, "features": len(self.feature_names)}

    def first_feedback(self, feedback) -> bool:
        """False when a feedback with this request id was counted already (it is answered, not
        counted again). A reward of 0, which seldon-core does not count, is not remembered: the
        corrected feedback still counts. Without any request id, every feedback counts."""
        if not feedback.reward:
            return True
        puid = (flask.request.headers.get(PUID_HEADER) if flask.has_request_context() else None) or (
            feedback.response.meta.puid or feedback.request.meta.puid
        )
        return not puid or self.counted_feedback.first(puid)

    def send_feedback_raw(self, feedback):
        # seldon-core has already counted the reward in seldon_api_model_feedback_* - except a
        # reward of exactly 0 (or none at all), which it skips without a word. Say so.
        if feedback.reward == 0:
            raise BadRequest(
                "feedback needs a non-zero 'reward': seldon-core does not count a reward of 0, "
                "so this feedback would be lost"
            )
        # Answer what seldon-core's default feedback path answers (an empty payload of the
        # request's kind, the request's puid, meta.requestPath), without decoding the features:
        # a fixed model does not learn from them, and decoding a malformed request (a tensor
        # without a shape, a "tftensor" without TensorFlow) was a 500 *after* the reward had been
        # counted (found by tests/reliability/test_fuzz.py). Counted means answered 200.
        answer = prediction_pb2.SeldonMessage()
        request_kind = feedback.request.WhichOneof("data_oneof")  # data, strData, ... or None
        if request_kind is None or feedback.request.data.WhichOneof("data_oneof") == "tensor":
            answer.data.tensor.shape.append(0)
        else:
            answer.data.ndarray.SetInParent()
        if feedback.request.meta.puid:
            answer.meta.puid = feedback.request.meta.puid
        for node, image in get_request_path().items():  # {graph node: image}, as construct_response
            answer.meta.requestPath[node] = image
        return answer

    def init_metadata(self) -> dict:
        return {"name": "mlflow-model", "platform": "mlflow", "versions": [self.model_uri]}


def _short(value: Any, limit: int = 60) -> str:
    """repr() for an error message, cut short: a client may send megabytes in one value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rows(data: dict) -> list:
    if "ndarray" in data:
        rows = data["ndarray"]
        if not isinstance(rows, list):
            raise BadRequest("'ndarray' must be a list of rows")
        return rows
    if "tensor" in data:
        tensor = data["tensor"]
        if not isinstance(tensor, dict):
            raise BadRequest("'tensor' must be an object with 'shape' and 'values'")
        shape, values = tensor.get("shape"), tensor.get("values")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise BadRequest("'tensor.shape' must be [rows, features]")
        if not isinstance(values, list) or len(values) != shape[0] * shape[1]:
            raise BadRequest(f"'tensor.values' must hold rows x features = {shape[0] * shape[1]} numbers")
        return [values[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])]
    raise BadRequest(
        "'data' must hold 'ndarray' (a list of rows) or 'tensor'; other payloads are not supported"
    )
