"""What the image checks share: where the image's files are, how a check fails, the tools."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from serving.cluster.render import REPO, ClusterError

IMAGE_DIR = Path(__file__).resolve().parents[1] / "image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"
REQUIREMENTS = IMAGE_DIR / "requirements.txt"
CONSTRAINTS = IMAGE_DIR / "constraints.txt"
DEFAULT_ENV = REPO / ".envs" / "cluster-image"  # git-ignored
MODEL_CLASS = "serving.mlflow_server.MLFlowServer"
# Only our launcher: plain `seldon-core-microservice` loses feedback counts once gunicorn runs
# threads (GUNICORN_THREADS in the manifest; measured 504 of 2,400 lost with 8), which
# serving/microservice.py's metrics lock prevents.
ENTRY_POINT = ("python", "-m", "serving.microservice")
# packages whose image version must equal training's (the image installs mlflow-skinny for mlflow)
SAME_AS_TRAINING = {"mlflow-skinny": "mlflow"}


class ImageError(ClusterError):
    """The image definition would not build or not serve; the message names the problem."""


class ImageEnvUnavailable(ImageError):
    """This machine cannot build the image's environment (no venv, no package index)."""


OFFLINE = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Network is unreachable|"
    r"ProxyError|No matching distribution found .* \(from versions: none\)|ensurepip|"
    r"Failed to fetch|dns error|error sending request"
)


def tool(name: str, package: str) -> str:
    """A command-line tool pip installs into this venv (or one on PATH)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise ImageError(f"{name} is not installed: pip install {package} (requirements.txt lists it)")
    return found
