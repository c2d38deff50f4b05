"""The ONE event-loop runner: uvloop when installed, the standard asyncio loop otherwise.

uvloop's C event loop and transports cut the CPU per request of the gateway and of the clients
that load it (measured in bench/). ``run`` also works where a loop is already running in this
thread (a notebook's kernel): the coroutine then gets a loop of its own in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; the fallback keeps other platforms working
    uvloop = None

T = TypeVar("T")


def _run_here(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro) if uvloop is not None else asyncio.run(coro)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new event loop and return its result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the usual case (scripts, the gateway)
        running = False
    else:
        running = True
    if not running:  # outside the except block: the coroutine's own errors carry no RuntimeError context
        return _run_here(coro)
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(_run_here, coro).result()
