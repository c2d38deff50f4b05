"""Fixtures of the reliability suite: private local stacks (own state folder, free loopback ports,
own manifest copy), so that killing, soaking and fuzzing never disturb the session's ``stack``.

Each private stack is stopped by pid at the end of its module (``LocalStack.down``), and the
suite checks that nothing of it is left running.
"""

from __future__ import annotations

import shutil
import time

import pytest

from serving import prometheus
from serving.local import LocalStack, stack_pids
from tests.conftest import MANIFEST


def wait_for_targets(url: str, targets: int, timeout: float = 30) -> None:
    """Until Prometheus has scraped every target (the gateway, each model server) at least once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = prometheus.query(url, "up")
        if len(up) == targets and all(r["value"][1] == "1" for r in up):
            return
        time.sleep(0.25)
    raise TimeoutError(f"Prometheus at {url} did not scrape all {targets} targets within {timeout:g} s")


@pytest.fixture(scope="module")
def private_stack(trained_arms, tmp_path_factory):
    """A local stack of this module's own; its processes are checked gone afterwards."""
    folder = tmp_path_factory.mktemp("reliability-stack")
    manifest = folder / "model-a-b.yaml"
    shutil.copy(MANIFEST, manifest)
    state = folder / "state"
    stack = LocalStack.up(manifest, port=0, state_dir=state, timeout=240)
    try:
        wait_for_targets(stack.prometheus_url, 1 + len(stack.predictor_urls))
        yield stack
    finally:
        stack.down()
        assert stack_pids(state) == [], "processes of the private stack survived `down`"
