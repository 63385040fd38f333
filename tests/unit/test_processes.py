"""Stopping a pool's process group: also what outlives its leader, and promptly."""

from __future__ import annotations

import signal
import subprocess
import time

from torchserve_backend.processes import alive, group_members, stop_group


def group_with_child(child_ignores_term: bool = False) -> tuple[subprocess.Popen, int]:
    """A group leader (our child, like TorchServe's wrapper) and a process under it (its Java)."""
    trap = "trap '' TERM; " if child_ignores_term else ""
    leader = subprocess.Popen(
        ["sh", "-c", f"({trap}exec sleep 600) & echo $!; wait"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    return leader, int(leader.stdout.readline())


def test_stop_group_stops_what_outlives_its_leader_without_waiting_on_the_dead_leader():
    leader, child = group_with_child()
    try:
        leader.send_signal(signal.SIGKILL)  # kill -9 of the wrapper: a zombie until reaped
        time.sleep(0.2)
        assert group_members(leader.pid) == [child]
        began = time.monotonic()
        assert stop_group(leader.pid, grace_s=5.0) == []
        assert time.monotonic() - began < 2.0  # the grace is for live processes, not zombies
        assert not alive(child)
    finally:
        leader.kill()
        leader.wait()


def test_stop_group_kills_what_ignores_sigterm_after_the_grace():
    leader, child = group_with_child(child_ignores_term=True)
    try:
        time.sleep(0.2)  # let the child set its trap
        began = time.monotonic()
        assert stop_group(leader.pid, grace_s=0.5) == []
        assert 0.5 <= time.monotonic() - began < 3.0
        assert not alive(child)
    finally:
        leader.kill()
        leader.wait()
