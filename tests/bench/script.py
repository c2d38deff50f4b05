"""Run one bench/ script as `make bench` would, bounded in time, and clean up after a timeout."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_script(module: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in the repo; on a timeout, SIGTERM first (every bench script
    takes the stacks and servers it started down on SIGTERM), then SIGKILL, and the test fails."""
    with subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            pytest.fail(f"{module} did not finish within {timeout:g} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
