"""How the benchmark measures: closed-loop runs interleaved across contenders, the median of rounds,
and, by pid, the servers' CPU per request and the addresses they listen on (loopback only)."""

from __future__ import annotations

import ipaddress
import os
import statistics
import time

import psutil

from bench import load


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def group_pids(leader: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == leader:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def listening(pids: list[int]) -> set[str]:
    found = set()
    for pid in pids:
        try:
            found |= {
                c.laddr.ip
                for c in psutil.Process(pid).net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            }
        except psutil.Error:
            continue
    return found


def assert_loopback(addresses: set[str], what: str) -> None:
    for address in addresses:
        ip = ipaddress.ip_address(address)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_loopback:
            raise RuntimeError(f"{what} listens on {address}, not loopback")


def measure(url: str, body, n: int, concurrency: int, pids: list[int] | None = None, **kwargs) -> dict:
    """One closed-loop run, plus the servers' CPU per request when their pids are given."""
    before = cpu_seconds(pids) if pids else 0.0
    run = load.closed_loop(url, body, n, concurrency, **kwargs).as_dict()
    if pids:
        run["server_cpu_us"] = round((cpu_seconds(pids) - before) / n * 1e6, 1)
    if run["errors"]:
        raise RuntimeError(f"{url}: {run['errors']} of {n} requests failed: {run['statuses']}")
    return run


def median_run(runs: list[dict]) -> dict:
    """Per metric, the median over rounds; the rounds themselves are kept."""
    keys = [
        k for k, v in runs[0].items() if isinstance(v, (int, float)) and k not in ("requests", "concurrency")
    ]
    summary = {k: round(statistics.median(r[k] for r in runs), 4) for k in keys}
    summary.update(requests=runs[0]["requests"], concurrency=runs[0]["concurrency"], rounds=len(runs))
    return summary


def interleaved(contenders: dict, rounds: int, shapes: list[tuple[str, int, int]]) -> dict:
    """Run every (shape x contender) ``rounds`` times, alternating the order each round.

    ``contenders``: name -> (url, body, pids); ``shapes``: (label, n, concurrency).
    Returns {contender: {label: median run}}.
    """
    raw: dict = {name: {label: [] for label, _, _ in shapes} for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for label, n, concurrency in shapes:
            for name in order:
                url, body, pids = contenders[name]
                run = measure(url, body, n, concurrency, pids)
                raw[name][label].append(run)
                log(
                    f"  round {r + 1} {label:<5} {name:<22} p50 {run['p50_ms']:.3f} ms  "
                    f"p99 {run['p99_ms']:.3f} ms  {run['rps']:.0f}/s  "
                    f"client {run['client_cpu_us']:.0f} µs/req"
                    + (f"  server {run['server_cpu_us']:.0f} µs/req" if "server_cpu_us" in run else "")
                )
    return {
        name: {label: median_run(runs) for label, runs in by_label.items()} for name, by_label in raw.items()
    }
