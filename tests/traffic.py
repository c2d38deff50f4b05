"""Test helpers: bounded HTTP traffic on loopback, and reading metrics back from Prometheus."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import aiohttp

from serving import aio, prometheus
from training.data import FEATURES

ROW = [7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]
PREDICTION = {"data": {"names": FEATURES, "ndarray": [ROW]}}


@dataclass
class Result:
    status: int | None  # None: no HTTP answer at all (connection refused, timeout)
    body: dict | str | None
    seconds: float
    sent_at: float

    @property
    def arm(self) -> str | None:
        """The graph node named in meta.requestPath, if any."""
        if isinstance(self.body, dict):
            path = self.body.get("meta", {}).get("requestPath", {})
            return next(iter(path), None)
        return None

    @property
    def info(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("status", {}).get("info", ""))
        return str(self.body)


async def _post(session: aiohttp.ClientSession, url: str, body, timeout: float) -> Result:
    start, sent_at = time.perf_counter(), time.time()
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    try:
        async with session.post(
            url,
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            text = await response.text()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            return Result(response.status, parsed, time.perf_counter() - start, sent_at)
    except (TimeoutError, aiohttp.ClientError) as e:
        return Result(None, f"{type(e).__name__}: {e}", time.perf_counter() - start, sent_at)


def send_many(url: str, n: int, body=PREDICTION, concurrency: int = 16, timeout: float = 10) -> list[Result]:
    """POST ``body`` ``n`` times with at most ``concurrency`` in flight; every result kept."""

    async def run():
        semaphore = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one():
                async with semaphore:
                    return await _post(session, url, body, timeout)

            return await asyncio.gather(*(one() for _ in range(n)))

    return aio.run(run())


class BackgroundLoad:
    """Steady traffic from a thread until stopped (bounded by ``max_requests`` and ``max_seconds``)."""

    def __init__(
        self,
        url: str,
        body=PREDICTION,
        concurrency: int = 4,
        max_requests: int = 20_000,
        max_seconds: float = 120,
        timeout: float = 10,
        pause: float = 0.0,
    ):
        self.url, self.body, self.concurrency = url, body, concurrency
        self.max_requests, self.max_seconds, self.timeout, self.pause = (
            max_requests,
            max_seconds,
            timeout,
            pause,
        )
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: aio.run(self._run()), daemon=True)

    async def _run(self):
        deadline = time.monotonic() + self.max_seconds
        async with aiohttp.ClientSession() as session:

            async def worker():
                while (
                    not self._stop.is_set()
                    and time.monotonic() < deadline
                    and len(self.results) < self.max_requests
                ):
                    self.results.append(await _post(session, self.url, self.body, self.timeout))
                    if self.pause:
                        await asyncio.sleep(self.pause)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.max_seconds + self.timeout)


def metric_sum_by_predictor(prometheus_url: str, expr: str) -> dict[str, float]:
    """``sum by (predictor_name) (expr)`` as {predictor: value}."""
    result = prometheus.query(prometheus_url, f"sum by (predictor_name) ({expr})")
    return {r["metric"].get("predictor_name", ""): float(r["value"][1]) for r in result}
