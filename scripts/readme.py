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


def machine() -> str:
    """One line describing this machine: CPU, cores, memory, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def replace_block(name: str, content: str, readme: Path = README) -> None:
    """Put ``content`` between the block's markers (which must exist)."""
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme.name} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    readme.write_text(pattern.sub(lambda m: m.group(1) + content.rstrip() + "\n" + m.group(2), text))
