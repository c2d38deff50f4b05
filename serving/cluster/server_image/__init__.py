"""The model server image (``serving/cluster/image``), checked without a Docker engine.

- ``dockerfile``: ``check_dockerfile`` runs hadolint, then the checks only this project can make;
- ``pins``: ``pin_drift`` (every model-side pin equals the version training runs with and records in
  the model's requirements.txt) and ``lock`` (constraints.txt from requirements.txt with uv);
- ``env``: ``build_env``, the image's Python environment in a virtualenv (same Python, the same
  requirements + constraints), where the tests serve a trained model with the image's command.
"""

from serving.cluster.server_image.common import (
    CONSTRAINTS,
    DEFAULT_ENV,
    DOCKERFILE,
    IMAGE_DIR,
    MODEL_CLASS,
    REQUIREMENTS,
    ImageEnvUnavailable,
    ImageError,
)
from serving.cluster.server_image.dockerfile import check_dockerfile, copies, hadolint, parse, workdir
from serving.cluster.server_image.env import build_env, env_python
from serving.cluster.server_image.pins import lock, pin_drift, read_pins

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_ENV",
    "DOCKERFILE",
    "IMAGE_DIR",
    "MODEL_CLASS",
    "REQUIREMENTS",
    "ImageEnvUnavailable",
    "ImageError",
    "build_env",
    "check_dockerfile",
    "copies",
    "env_python",
    "hadolint",
    "lock",
    "parse",
    "pin_drift",
    "read_pins",
    "workdir",
]
