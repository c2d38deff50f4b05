"""The image's Python environment in a virtualenv, where the tests serve a model with the image's CMD."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from serving.cluster.server_image.common import (
    CONSTRAINTS,
    DEFAULT_ENV,
    OFFLINE,
    REQUIREMENTS,
    ImageEnvUnavailable,
    ImageError,
)


def _stamp() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, CONSTRAINTS):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def env_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"  # POSIX only, like build_env's file lock


def build_env(venv: Path = DEFAULT_ENV, timeout: float = 600) -> Path:
    """The image's Python environment in a virtualenv (reused while requirements are unchanged).

    The same Python minor version as the image's base, its bundled pip, then exactly the Dockerfile's
    ``pip install -r requirements.txt -c constraints.txt`` and ``pip check``. Returns its python.
    ``ImageEnvUnavailable`` when this machine cannot do it (no venv module, no package index);
    ``ImageError`` when the requirements themselves fail (a conflict, a broken ``pip check``).
    """
    import fcntl

    venv = Path(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # one builder at a time (parallel test runs)
        return _build_env_locked(venv, timeout)


def _build_env_locked(venv: Path, timeout: float) -> Path:
    stamp = venv / ".image-requirements.sha256"
    python = env_python(venv)
    if python.exists() and stamp.is_file() and stamp.read_text() == _stamp():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
            "-c",
            str(CONSTRAINTS),
        ],
        [str(python), "-m", "pip", "check"],
    ]
    for i, command in enumerate(steps):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ImageEnvUnavailable(
                f"building the image's environment timed out after {timeout:g} s at: {' '.join(command[:4])}"
            ) from e
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            error = ImageEnvUnavailable if i == 0 or OFFLINE.search(output) else ImageError
            raise error(
                f"building the image's environment failed at `{' '.join(command[:5])} ...` "
                f"(exit {result.returncode}):\n"
                f"{output[-3000:]}"
            )
    stamp.write_text(_stamp())
    return python
