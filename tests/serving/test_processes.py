"""serving.local.processes on real processes and sockets (no stack: fast)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from serving.local import LocalStack, StackNotRunning, processes
from serving.local.processes import MARKER, ROLE


def test_free_ports_are_distinct_and_free():
    ports = processes.free_ports(6)
    assert len(set(ports)) == 6
    assert not any(processes.port_in_use(p) for p in ports)


def test_a_listening_port_is_in_use():
    with socket.socket() as s:
        s.bind((processes.HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        assert processes.port_in_use(port)
    assert not processes.port_in_use(port)


def test_an_exited_child_not_yet_reaped_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not processes.alive(child.pid)
    child.wait()
    assert not processes.alive(child.pid) and not processes.alive(None)


# a group leader with a child in its group; each notes a SIGTERM in a file of its own
GROUP = textwrap.dedent(
    """
    import pathlib, signal, subprocess, sys, time
    folder, role = pathlib.Path(sys.argv[1]), sys.argv[2]
    def note(signum, frame):
        (folder / role).write_text("TERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, note)
    if role == "leader":
        subprocess.Popen([sys.executable, __file__, str(folder), "child"])
    (folder / f"{role}.started").touch()
    time.sleep(60)
    """
)


def test_a_marked_group_is_found_and_only_its_leader_gets_sigterm(tmp_path):
    script = tmp_path / "group.py"
    script.write_text(GROUP)
    env = {**os.environ, MARKER: str(tmp_path), ROLE: "model-a"}
    leader = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), "leader"], env=env, process_group=0
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "child.started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    found = processes.stack_pids(tmp_path)
    assert leader.pid in found and len(found) == 2  # the child inherited the marker
    assert processes.ours(leader.pid, tmp_path) and not processes.ours(leader.pid, tmp_path / "other")
    assert not processes.ours(os.getpid(), tmp_path)  # alive, but not one of the stack's
    rows = processes.describe(processes.marked(tmp_path))
    assert {r["role"] for r in rows} == {"model-a"} and {r["group"] for r in rows} == {leader.pid}

    processes.stop_groups([leader.pid], grace=10)
    leader.wait(5)
    processes.wait_gone(set(found))
    assert processes.stack_pids(tmp_path) == []
    # the leader stopped on its SIGTERM; the child got none, it went with the group's SIGKILL
    assert (tmp_path / "leader").read_text() == "TERM"
    assert not (tmp_path / "child").exists()


def test_a_stale_state_naming_a_strangers_pid_is_not_a_running_stack_and_down_spares_it(tmp_path):
    """After a reboot, say, state.json's supervisor pid can belong to an unrelated process."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "state.json").write_text(
            json.dumps({"supervisor": stranger.pid, "processes": {"model-a": {"pid": stranger.pid}}})
        )
        stack = LocalStack(tmp_path)
        assert not stack.running()
        assert stack.status()["orphans"] == []
        with pytest.raises(StackNotRunning, match="no local stack is running"):
            stack.reload()
        assert stack.down() == []
        assert stranger.poll() is None  # still running: never signalled
    finally:
        stranger.kill()
        stranger.wait()
