"""A small load generator for the benchmark: one asyncio client, keep-alive, loopback only.

Two shapes of load, both bounded in count and time:

- ``sequential``: one request at a time, the latency of each (p50/p99);
- ``closed_loop``: ``concurrency`` workers each sending the next request as soon as the last one
  answered, for a fixed number of requests: requests/s.

The client shares the 2 cores with the servers it measures, so every run also reports the
client's own CPU time per request (``client_cpu_us``): a number that stays small next to the
server's latency says the client did not starve the servers. uvloop is used when installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass

import aiohttp

from serving import aio  # the same loop the gateway runs on: less client overhead per request


@dataclass
class Run:
    """One measured run: latencies in ms, throughput in requests/s, client CPU per request in µs."""

    requests: int
    concurrency: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    rps: float
    client_cpu_us: float
    statuses: dict

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def closed_loop(
    url: str,
    body,
    n: int,
    concurrency: int = 1,
    warmup: int = 50,
    timeout: float = 10,
    content_type: str = "application/json",
    ok=(200,),
) -> Run:
    """Send ``n`` POSTs with ``concurrency`` in flight (after ``warmup`` unmeasured ones)."""
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    data = data.encode() if isinstance(data, str) else data
    headers = {"Content-Type": content_type}

    async def main():
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

            async def one(record: bool) -> None:
                start = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError):
                    status = 0
                if record:
                    latencies.append((time.perf_counter() - start) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1

            async def worker(count: int, record: bool) -> None:
                for _ in range(count):
                    await one(record)

            def split(total: int) -> list[int]:
                return [
                    total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)
                ]

            await asyncio.gather(*(worker(k, False) for k in split(warmup)))
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(k, True) for k in split(n)))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        errors = sum(v for k, v in statuses.items() if k not in ok)
        return Run(
            requests=n,
            concurrency=concurrency,
            seconds=seconds,
            errors=errors,
            p50_ms=percentile(latencies, 50),
            p90_ms=percentile(latencies, 90),
            p99_ms=percentile(latencies, 99),
            mean_ms=statistics.fmean(latencies),
            rps=n / seconds,
            client_cpu_us=cpu / n * 1e6,
            statuses={str(k): v for k, v in sorted(statuses.items())},
        )

    return aio.run(main())


def sequential(url: str, body, n: int, warmup: int = 50, **kwargs) -> Run:
    return closed_loop(url, body, n, concurrency=1, warmup=warmup, **kwargs)


if __name__ == "__main__":  # quick manual check: python bench/load.py URL [N] [CONCURRENCY]
    import sys

    from training.data import FEATURES

    row = [7.0, 0.27, 0.36, 20.7, 0.045, 45.0, 170.0, 1.001, 3.0, 0.45, 8.8]
    body = {"data": {"names": FEATURES, "ndarray": [row]}}
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    c = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    print(json.dumps(closed_loop(sys.argv[1], body, n, c).as_dict()), os.getpid())
