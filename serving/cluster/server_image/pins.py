"""The image's Python pins: equal to training's (``pin_drift``), and regenerated with uv (``lock``)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from serving.cluster.server_image.common import (
    CONSTRAINTS,
    OFFLINE,
    REQUIREMENTS,
    SAME_AS_TRAINING,
    ImageEnvUnavailable,
    ImageError,
    tool,
)


def read_pins(path: Path) -> dict[str, str]:
    """package -> version specifier (``==1.2``, ``>=1,<2``) of a requirements/constraints file."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise ImageError(f"{path.name}: options like {line!r} are not allowed here; list packages only")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as e:
            raise ImageError(f"{path.name}: cannot read {raw!r} ({e})") from e
        pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return pins


def pin_drift(model_requirements: Path | None = None) -> list[str]:
    """Where the image's pins differ from training's environment (and from a model's requirements.txt)."""
    image = read_pins(REQUIREMENTS)
    locked = read_pins(CONSTRAINTS)
    problems = []
    for package, spec in image.items():
        if not spec.startswith("==") and not locked.get(package, "").startswith("=="):
            problems.append(f"{package} is not pinned with == in requirements.txt or constraints.txt")
        training = SAME_AS_TRAINING.get(package, package)
        try:
            installed = metadata.version(training)
        except metadata.PackageNotFoundError:
            continue  # not part of training (e.g. a serving-only package)
        pinned = spec[2:] if spec.startswith("==") else locked.get(package, "==")[2:]
        if pinned != installed:
            problems.append(f"{package}: the image pins {pinned}, training runs {training} {installed}")
    for package, spec in locked.items():
        if package in image and image[package].startswith("==") and image[package] != spec:
            problems.append(f"{package}: requirements.txt says {image[package]}, constraints.txt {spec}")
    if model_requirements is not None:
        for package, spec in read_pins(Path(model_requirements)).items():
            image_name = next((k for k, v in SAME_AS_TRAINING.items() if v == package), package)
            if image_name not in image:
                problems.append(f"the model requires {package}{spec}, which the image does not install")
            elif image[image_name] != spec:
                problems.append(
                    f"the model requires {package}{spec}, the image pins {image_name}{image[image_name]}"
                )
    return problems


def lock(output: Path = CONSTRAINTS) -> Path:
    """Rewrite constraints.txt with ``uv pip compile``: requirements.txt resolved for training's Python,
    constrained to training's installed versions wherever training has the package."""
    import tempfile

    training = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    with tempfile.TemporaryDirectory(prefix="lock-") as scratch:
        constraints = Path(scratch) / "training.txt"
        constraints.write_text("\n".join(sorted(training)) + "\n")
        command = [
            tool("uv", "uv"),
            "pip",
            "compile",
            str(REQUIREMENTS),
            "--constraint",
            str(constraints),
            "--python-version",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            "--no-header",
            "--no-annotate",
            "--quiet",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        error = ImageEnvUnavailable if OFFLINE.search(result.stderr) else ImageError
        raise error(f"uv pip compile failed (exit {result.returncode}):\n{result.stderr.strip()[-3000:]}")
    header = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("#")]
    Path(output).write_text("\n".join(header) + "\n" + result.stdout)
    return Path(output)
