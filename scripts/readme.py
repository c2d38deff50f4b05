"""Keep the README's measured numbers in step with real runs.

Blocks of README.md between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` are written by
the scripts that measure them (the notebook runner, the benchmark), never typed by hand.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def machine() -> dict:
    """What this machine is: CPU, cores, memory, OS, Python (and the serving packages' versions)."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        ram_gib = round(int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        ram_gib = None
    versions = {}
    for package in (
        "seldon-core",
        "mlflow",
        "scikit-learn",
        "aiohttp",
        "uvloop",
        "gunicorn",
        "Flask",
        "uvicorn",
        "fastapi",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": versions,
    }


def describe(m: dict | None = None) -> str:
    """``machine()`` in one line."""
    m = m or machine()
    memory = f", {m['ram_gib']:.0f} GiB RAM" if m.get("ram_gib") else ""
    return f"{m['cpu']}, {m['cores']} cores{memory}, {m['os']}, Python {m['python']}"


def replace_block(name: str, content: str, readme: Path = README) -> None:
    """Put ``content`` between the block's markers (which must exist)."""
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme.name} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    readme.write_text(pattern.sub(lambda m: m.group(1) + content.rstrip() + "\n" + m.group(2), text))
