"""The model server: what Seldon's prepackaged MLFLOW_SERVER does, plus input checks.

Run by the real seldon-core microservice (see ``serving/microservice.py``):

    python -m serving.microservice serving.mlflow_server.MLFlowServer \
        --parameters '[{"name": "model_uri", "value": "models:/wines-classifier@a", "type": "STRING"}]'

Like upstream (servers/mlflowserver/MLFlowServer.py) it loads the MLflow pyfunc from
``model_uri`` and predicts on a DataFrame built with the request's feature names. Unlike upstream,
it checks every request against the model's signature first and answers 400 with a message that
names the problem (wrong feature count, unknown or missing names, non-numeric values, NaN or
infinity, an empty batch) instead of a 500 from deep inside pandas or MLflow.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from seldon_core.flask_utils import SeldonMicroserviceException
from seldon_core.user_model import SeldonComponent, SeldonNotImplementedError
from seldon_core.utils import construct_response_json

logger = logging.getLogger(__name__)

# URIs that MLflow resolves itself; anything else goes through seldon-core's Storage (gs://, s3://,
# local folders), as the prepackaged server does after its rclone init container.
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class BadRequest(SeldonMicroserviceException):
    """A request the model cannot answer: HTTP 400 with Seldon's error body."""

    def __init__(self, message: str):
        super().__init__(message, status_code=400, reason="MICROSERVICE_BAD_DATA")


class MLFlowServer(SeldonComponent):
    def __init__(self, model_uri: str):
        super().__init__()
        self.model_uri = model_uri
        self.ready = False

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
        self.ready = True

    # Seldon calls predict_raw with the whole request, before its own (500-prone) parsing.
    def predict_raw(self, request: Any) -> dict:
        if not self.ready:
            raise SeldonMicroserviceException("model not loaded yet", status_code=503, reason="MICROSERVICE_NOT_READY")
        frame = self.request_frame(request)
        result = np.asarray(self._model.predict(frame), dtype=float)
        return construct_response_json(self, False, request, result)

    def request_frame(self, request: Any) -> pd.DataFrame:
        """Validate a SeldonMessage (``ndarray`` or ``tensor``) into a DataFrame in signature order."""
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
                raise BadRequest(f"row {i} has {len(row)} values, the model expects {n} features: {self.feature_names}")
            for j, value in enumerate(row):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise BadRequest(f"row {i}, {self._label(names, j)!r}: {value!r} is not a number")
                if not math.isfinite(value):
                    raise BadRequest(f"row {i}, {self._label(names, j)!r}: {value} is not a finite number")

        values = np.asarray(rows, dtype="float64")
        if not names:  # like upstream: without names, columns are in signature order
            return pd.DataFrame(values, columns=self.feature_names)
        unknown = [name for name in names if name not in self._column_index]
        missing = [name for name in self.feature_names if name not in names]
        if unknown or missing or len(names) != n:
            raise BadRequest(
                f"feature names do not match the model's signature: "
                f"unknown {unknown}, missing {missing}; expected {self.feature_names}"
            )
        return pd.DataFrame(values, columns=names)[self.feature_names]

    def _label(self, names: list, j: int) -> str:
        # without names, values are taken in signature order: name the feature that position means
        return names[j] if j < len(names) else self.feature_names[j]

    def health_status(self) -> dict:
        if not self.ready:
            raise SeldonMicroserviceException("model not loaded yet", status_code=503, reason="MICROSERVICE_NOT_READY")
        return {"model_uri": self.model_uri, "features": len(self.feature_names)}

    def send_feedback_raw(self, feedback):
        # seldon-core has already counted the reward in seldon_api_model_feedback_* - except a
        # reward of exactly 0 (or none at all), which it skips without a word. Say so.
        if feedback.reward == 0:
            raise BadRequest(
                "feedback needs a non-zero 'reward': seldon-core does not count a reward of 0, "
                "so this feedback would be lost"
            )
        raise SeldonNotImplementedError("default feedback handling")  # seldon-core answers as usual

    def send_feedback(self, features, feature_names, reward, truth, routing=None):
        return []  # a fixed model learns nothing from feedback; the metrics are the point

    def init_metadata(self) -> dict:
        return {"name": "mlflow-model", "platform": "mlflow", "versions": [self.model_uri]}


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
    raise BadRequest("'data' must hold 'ndarray' (a list of rows) or 'tensor'; other payloads are not supported")
