"""Steady predict + feedback load for the reliability suite: feedback.py's own per-row path
(predict through the ingress, feedback to the serving arm's endpoint, its retries and its log
columns) driven at a fixed rate from a background thread, with the wall-clock time of each row.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pandas as pd

import feedback
from serving import aio
from serving.client import Connections
from serving.endpoints import Endpoints
from training.data import FEATURES, TARGET


class PacedReplay:
    """Replay hold-out rows at ``rate`` rows/s (cycling through them) until stopped.

    Bounded by ``max_seconds`` and ``max_rows``. ``log()`` is a feedback.py log plus ``started``
    and ``finished`` (Unix times) and ``feedback_started`` (when the feedback was first sent).
    """

    def __init__(
        self,
        endpoints: Endpoints,
        rate: float = 50,
        max_seconds: float = 120,
        max_rows: int = 20_000,
        in_flight: int = 32,
        retries: int = 8,
    ):
        self.replayer = feedback.Replayer(endpoints, "arm", retries=retries, timeout=30)
        self.rate, self.max_seconds, self.max_rows, self.in_flight = rate, max_seconds, max_rows, in_flight
        rows = feedback.holdout_rows()
        self.features = rows[FEATURES].to_numpy(dtype="float64")
        self.truths = rows[TARGET].to_numpy(dtype="float64")
        self.rows: list[dict] = []
        self.late = 0  # rows that started more than 100 ms behind schedule (the client fell behind)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: aio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        semaphore = asyncio.Semaphore(self.in_flight)
        connections = Connections(self.in_flight)
        try:

            async def row(i: int) -> None:
                async with semaphore:
                    k = i % len(self.truths)
                    started = time.time()
                    result = await self.replayer.one(
                        connections, i, self.features[k : k + 1], float(self.truths[k])
                    )
                    result.update(
                        started=started,
                        finished=time.time(),
                        feedback_started=started + result.get("predict_ms", 0) / 1000,
                    )
                    self.rows.append(result)

            tasks = []
            start = time.monotonic()
            i = 0
            while (
                not self._stop.is_set() and i < self.max_rows and time.monotonic() - start < self.max_seconds
            ):
                due = start + i / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.1:
                    self.late += 1
                tasks.append(asyncio.create_task(row(i)))
                i += 1
            await asyncio.gather(*tasks)
        finally:
            await connections.close()

    def __enter__(self) -> PacedReplay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.max_seconds + 120)
        assert not self._thread.is_alive(), "the load did not finish"

    def log(self) -> pd.DataFrame:
        return pd.DataFrame(
            self.rows, columns=feedback.LOG_COLUMNS + ["started", "finished", "feedback_started"]
        )
