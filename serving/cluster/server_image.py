"""The model server image (``serving/cluster/image``): static checks, version pins, its Python env.

There is no Docker engine on the machines that test this project, so the image is checked
without being built:

- ``check_dockerfile``: base image pinned by tag and on training's Python; every COPY source
  exists and is not dropped by ``Dockerfile.dockerignore``; pip installs only the pinned files it
  copied; a numeric non-root ``USER``; the ``CMD`` runs seldon-core's microservice (directly or
  through ``serving.microservice``) on a model class that the copied files define, with every
  project module it imports copied too; and it listens on all interfaces in the pod;
- ``pin_drift``: every model-side pin equals the version training runs with (and records in the
  model's ``requirements.txt``);
- ``build_env``: the image's Python environment in a virtualenv (same Python, same pip, the same
  requirements + constraints), where the tests serve a trained model with the image's command.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from serving.cluster.render import REPO, ClusterError

IMAGE_DIR = Path(__file__).resolve().parent / "image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"
REQUIREMENTS = IMAGE_DIR / "requirements.txt"
CONSTRAINTS = IMAGE_DIR / "constraints.txt"
DEFAULT_ENV = REPO / ".envs" / "cluster-image"  # git-ignored
MODEL_CLASS = "serving.mlflow_server.MLFlowServer"
# Only our launcher: plain `seldon-core-microservice` loses feedback counts once gunicorn runs
# threads (GUNICORN_THREADS in the manifest; measured 504 of 2,400 lost with 8), which
# serving/microservice.py's metrics lock prevents.
ENTRY_POINTS = (("python", "-m", "serving.microservice"),)
# packages whose image version must equal training's (the image installs mlflow-skinny for mlflow)
SAME_AS_TRAINING = {"mlflow-skinny": "mlflow"}


class ImageError(ClusterError):
    """The image definition would not build or not serve; the message names the problem."""


class ImageEnvUnavailable(ImageError):
    """This machine cannot build the image's environment (no venv, no package index): not the image's fault."""


_OFFLINE = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Network is unreachable|"
    r"ProxyError|No matching distribution found .* \(from versions: none\)|ensurepip"
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """package -> version specifier (``==1.2``, ``>=1,<2``) of a requirements/constraints file."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise ImageError(f"{path.name}: options like {line!r} are not allowed here; list packages only")
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$", line)
        if not match:
            raise ImageError(f"{path.name}: cannot read {raw!r}")
        pins[_norm(match.group(1))] = match.group(3).replace(" ", "")
    return pins


# --------------------------------------------------------------------------------- Dockerfile
def _instructions(dockerfile: Path) -> list[dict]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(dockerfile), cache_content=True)
    return [dict(i, instruction=i["instruction"].upper()) for i in parser.structure]


def _json_or_shell(value: str) -> tuple[list[str], bool]:
    value = value.strip()
    if value.startswith("["):
        try:
            return [str(v) for v in json.loads(value)], True
        except json.JSONDecodeError:
            pass
    return shlex.split(value), False


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, for the plain patterns used here: the last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        pattern = pattern.strip("/")
        if fnmatch.fnmatchcase(relative, pattern) or relative.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def _dockerignore(dockerfile: Path, context: Path) -> list[str]:
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.is_file():
            return [
                line.strip()
                for line in candidate.read_text().splitlines()
                if line.strip() and not line.startswith("#")
            ]
    return []


def _project_imports(path: Path) -> set[str]:
    """Modules of this project (``serving...``, ``training...``) that a file imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {
            n
            for n in names
            if n.split(".")[0] in ("serving", "training", "feedback", "analysis", "promotion")
        }
    return found


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def check_dockerfile(
    dockerfile: Path = DOCKERFILE, context: Path = REPO, python: str | None = None
) -> list[str]:
    """Problems found in the Dockerfile, [] if none. ``python``: training's ``major.minor``."""
    dockerfile, context = Path(dockerfile), Path(context)
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    problems: list[str] = []
    steps = _instructions(dockerfile)
    kinds = [s["instruction"] for s in steps]

    froms = [s for s in steps if s["instruction"] == "FROM"]
    if len(froms) != 1:
        problems.append(f"expected one FROM (a single-stage image), found {len(froms)}")
    for step in froms:
        image = step["value"].split()[0]
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        if "@sha256:" not in image and (not tag or tag == "latest"):
            problems.append(
                f"line {step['startline'] + 1}: base image {image!r} is not pinned by a tag (or digest)"
            )
        elif name.split("/")[-1] == "python" and not re.match(rf"^{re.escape(python)}(\.\d+)?(-|$)", tag):
            problems.append(
                f"line {step['startline'] + 1}: base image {image!r} is not training's Python {python}"
            )

    copied: dict[str, str] = {}  # source (relative to the context) -> destination in the image
    ignore = _dockerignore(dockerfile, context)
    for step in steps:
        if step["instruction"] == "ADD":
            problems.append(
                f"line {step['startline'] + 1}: use COPY, not ADD (ADD fetches URLs and unpacks archives)"
            )
        if step["instruction"] != "COPY":
            continue
        words, _ = _json_or_shell(step["value"])
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        *sources, destination = words
        for source in sources:
            if not (context / source).exists():
                problems.append(
                    f"line {step['startline'] + 1}: COPY source {source} does not exist in the build context"
                )
            elif _ignored(source, ignore):
                problems.append(
                    f"line {step['startline'] + 1}: COPY source {source} is excluded by the .dockerignore"
                )
            target = destination if not destination.endswith("/") else destination + Path(source).name
            copied[source] = target

    for step in steps:
        if step["instruction"] == "RUN" and re.search(r"\bpip3?\s+install\b", step["value"]):
            for command in re.split(r"&&|;", step["value"]):
                if not re.search(r"\bpip3?\s+install\b", command):
                    continue
                words = shlex.split(command)
                words = words[words.index("install") + 1 :]
                files, loose, i = [], [], 0
                while i < len(words):
                    if words[i] in ("-r", "--requirement", "-c", "--constraint"):
                        files.append(words[i + 1] if i + 1 < len(words) else "")
                        i += 2
                        continue
                    if not words[i].startswith("-"):
                        loose.append(words[i])
                    i += 1
                if loose:
                    problems.append(
                        f"line {step['startline'] + 1}: pip installs {loose} outside the pinned requirement files"
                    )
                in_image = set(copied.values())
                for f in files:
                    if f not in in_image:
                        problems.append(
                            f"line {step['startline'] + 1}: pip reads {f}, which no COPY puts there"
                        )
                if not any(w in ("-c", "--constraint") for w in words):
                    problems.append(
                        f"line {step['startline'] + 1}: pip install without the constraints file (-c): transitive versions would float"
                    )

    users = [s for s in steps if s["instruction"] == "USER"]
    cmds = [s for s in steps if s["instruction"] in ("CMD", "ENTRYPOINT")]
    if not users:
        problems.append("no USER: the container would run as root")
    else:
        user = users[-1]["value"].split(":")[0].strip()
        if user in ("0", "root"):
            problems.append(f"USER {user} is root")
        elif not user.isdigit():
            problems.append(
                f"USER {user!r} is a name: use the numeric UID so that Kubernetes' runAsNonRoot can check it"
            )
        if cmds and users[-1]["startline"] > cmds[-1]["startline"]:
            problems.append("USER comes after CMD")

    env: dict[str, str] = {}
    for step in steps:
        if step["instruction"] == "ENV":
            for word in shlex.split(step["value"]):
                if "=" in word:
                    key, value = word.split("=", 1)
                    env[key] = value
    workdirs = [s["value"].strip() for s in steps if s["instruction"] == "WORKDIR"]

    if "ENTRYPOINT" in kinds:
        problems.append(
            "ENTRYPOINT is set: keep CMD only, as Seldon's images do, so a componentSpec can override it"
        )
    if not any(s["instruction"] == "CMD" for s in steps):
        problems.append("no CMD")
        return problems
    cmd, exec_form = _json_or_shell([s for s in steps if s["instruction"] == "CMD"][-1]["value"])
    if not exec_form:
        problems.append("CMD is in shell form: use the JSON (exec) form so the server gets SIGTERM")
    entry = next((e for e in ENTRY_POINTS if tuple(cmd[: len(e)]) == e), None)
    if entry is None:
        problems.append(
            f"CMD {cmd} does not run {' or '.join(' '.join(e) for e in ENTRY_POINTS)} "
            "(seldon-core's microservice with the metrics lock the manifest's gunicorn threads need)"
        )
        return problems
    model_class = cmd[len(entry)] if len(cmd) > len(entry) else ""
    if model_class != MODEL_CLASS:
        problems.append(f"CMD serves {model_class!r}, expected {MODEL_CLASS}")
    if entry[-1] == "serving.microservice" and env.get("SELDON_BIND_HOST") != "0.0.0.0":
        problems.append(
            "serving.microservice binds 127.0.0.1 unless SELDON_BIND_HOST=0.0.0.0: the executor could not reach the pod"
        )

    # the modules the CMD needs, and the project modules they import, must all be copied
    image_roots = {env.get("PYTHONPATH", "")} | set(workdirs[-1:])
    needed = [entry[-1]] if entry[-1] == "serving.microservice" else []
    needed.append(model_class.rsplit(".", 1)[0])
    seen = set()
    while needed:
        module = needed.pop()
        if module in seen:
            continue
        seen.add(module)
        local = _module_file(module, context)
        if local is None:
            continue  # e.g. serving.mlflow_server.X attribute imports; the module itself is checked
        relative = local.relative_to(context).as_posix()
        if relative not in copied:
            problems.append(
                f"{relative} ({module}) is imported by the image's code but not copied into the image"
            )
            continue
        if not any(copied[relative] == f"{root.rstrip('/')}/{relative}" for root in image_roots if root):
            problems.append(
                f"{relative} is copied to {copied[relative]}, not under the image's PYTHONPATH/WORKDIR"
            )
        parts = module.split(".")
        for i in range(1, len(parts)):  # parent packages need their __init__.py
            needed.append(".".join(parts[:i]))
        needed += sorted(_project_imports(local))
    if model_class and "." in model_class:
        module, cls = model_class.rsplit(".", 1)
        local = _module_file(module, context)
        if local is None or not any(
            isinstance(n, ast.ClassDef) and n.name == cls for n in ast.parse(local.read_text()).body
        ):
            problems.append(f"{model_class}: no class {cls} in {module}")
    return problems


def stage_image_files(destination: Path, dockerfile: Path = DOCKERFILE, context: Path = REPO) -> Path:
    """Copy what the Dockerfile's COPY instructions put in the image under ``destination`` (its /)."""
    for step in _instructions(dockerfile):
        if step["instruction"] != "COPY":
            continue
        words = [w for w in _json_or_shell(step["value"])[0] if not w.startswith("--")]
        *sources, target = words
        for source in sources:
            into = target + Path(source).name if target.endswith("/") else target
            path = destination / into.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / source, path)
    return destination


def dockerfile_env() -> dict[str, str]:
    env = {}
    for step in _instructions(DOCKERFILE):
        if step["instruction"] == "ENV":
            env.update(w.split("=", 1) for w in shlex.split(step["value"]) if "=" in w)
    return env


def dockerfile_cmd() -> list[str]:
    return _json_or_shell([s for s in _instructions(DOCKERFILE) if s["instruction"] == "CMD"][-1]["value"])[0]


def dockerfile_workdir() -> str:
    return [s["value"].strip() for s in _instructions(DOCKERFILE) if s["instruction"] == "WORKDIR"][-1]


# -------------------------------------------------------------------------------------- pins
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


# ---------------------------------------------------------------------------- the image's env
def _stamp() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, CONSTRAINTS):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def env_python(venv: Path) -> Path:
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


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
            error = ImageEnvUnavailable if i == 0 or _OFFLINE.search(output) else ImageError
            raise error(
                f"building the image's environment failed at `{' '.join(command[:5])} ...` (exit {result.returncode}):\n"
                f"{output[-3000:]}"
            )
    stamp.write_text(_stamp())
    return python


def lock(venv: Path | None = None) -> Path:
    """Rewrite constraints.txt: resolve requirements.txt alone, then prefer training's versions."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lock-") as scratch:
        venv = Path(venv or Path(scratch) / "env")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = env_python(venv)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True)
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--all"], check=True, capture_output=True, text=True
        ).stdout
    header = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("#")]
    pins = []
    for line in frozen.splitlines():
        if "==" not in line or line.startswith(("pip==", "wheel==", "-e")):
            continue
        name, version = line.split("==", 1)
        try:
            version = metadata.version(name)  # training's version where it has the package
        except metadata.PackageNotFoundError:
            pass
        pins.append(f"{name}=={version}")
    CONSTRAINTS.write_text("\n".join(header + sorted(pins, key=str.lower)) + "\n")
    return CONSTRAINTS
