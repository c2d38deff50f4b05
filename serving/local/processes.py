"""Processes and ports of the local stack, with psutil (Linux and macOS alike).

Every process the stack starts carries ``MARKER=<state dir>`` in its environment, so the stack's
processes can be found even when the supervisor that started them is gone. Each supervised
process leads a process group of its own, like a container: stopping one sends SIGTERM to the
group's leader only (as the kubelet signals a container's PID 1), waits a grace period, then
SIGKILLs whatever is left of the group (as the runtime does when the grace period ends).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import psutil

HOST = "127.0.0.1"
MARKER = "MLFLOW_SELDON_STACK"  # set in every process the stack starts, to find them on `down`
ROLE = "MLFLOW_SELDON_STACK_PROCESS"  # which of the stack's processes (model-a, gateway, ...) it belongs to


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = HOST) -> list[int]:
    """``n`` distinct ports the OS calls free (all held open together, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie (a dead child nobody has reaped yet)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def ours(pid: int | None, state_dir: Path) -> bool:
    """``pid`` is a live process of the stack in ``state_dir`` (not a stranger that reused the pid
    of a supervisor that died, say before a reboot)."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MARKER) == str(state_dir)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def marked(state_dir: Path) -> list[psutil.Process]:
    """Every live process that carries this stack's marker, orphans included."""
    value = str(state_dir)
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(MARKER) == value and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stack_pids(state_dir: Path) -> list[int]:
    return sorted(p.pid for p in marked(Path(state_dir)))


def describe(processes: list[psutil.Process]) -> list[dict]:
    """pid, command and listening addresses of each process (what `status` shows for orphans)."""
    rows = []
    for process in processes:
        try:
            with process.oneshot():
                listening = sorted(
                    f"{c.laddr.ip}:{c.laddr.port}"
                    for c in process.net_connections("inet")
                    if c.status == psutil.CONN_LISTEN
                )
                rows.append(
                    {
                        "pid": process.pid,
                        "role": process.environ().get(ROLE, "supervisor"),
                        "group": os.getpgid(process.pid),
                        "command": " ".join(process.cmdline())[:120],
                        "listening": listening,
                    }
                )
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return sorted(rows, key=lambda r: (r["group"], r["pid"]))


def signal_group(leader: int, sig: int) -> None:
    try:
        os.killpg(leader, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(leaders: list[int], grace: float = 10.0) -> None:
    """SIGTERM each group's leader, wait up to ``grace`` seconds, then SIGKILL every group.

    Only the leader gets SIGTERM: a seldon-core microservice's gunicorn master then stops its
    workers, whose exit hook still reaches the metrics Manager process. SIGTERM to the whole
    group killed that Manager first and left a traceback in the model server's log at every
    normal shutdown.
    """
    for leader in leaders:
        try:
            os.kill(leader, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(leader) for leader in leaders):
        time.sleep(0.05)
    for leader in leaders:
        signal_group(leader, signal.SIGKILL)  # the rest of the group, or a leader that ignored SIGTERM


def kill(processes: list[psutil.Process], timeout: float = 5.0) -> None:
    """SIGKILL each process (and its group when it leads one); wait until they are gone."""
    for process in processes:
        try:
            if os.getpgid(process.pid) == process.pid:
                signal_group(process.pid, signal.SIGKILL)
            process.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    psutil.wait_procs(processes, timeout=timeout)


def wait_gone(pids: set[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
