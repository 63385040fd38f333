"""Find and stop processes by what they are, not by the one pid we happened to start.

`torchserve --start` is a Python wrapper whose Java frontend (and the frontend's Python
workers) outlive a `kill -9` of the wrapper. They stay in the wrapper's process group and
keep the environment it was started with, so either finds them when the wrapper is gone.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterator

PROC = Path("/proc")


def _pids() -> Iterator[int]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # gone meanwhile
        return None


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes of one process group (a dead leader leaves the group id in use)."""
    members = []
    for pid in _pids():
        fields = _stat(pid)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(pid)
    return members


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes started with NAME=VALUE in their environment."""
    wanted = f"{name}={value}".encode()
    found = []
    for pid in _pids():
        try:
            environ = (PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and alive(pid):
            found.append(pid)
    return found


def stop_processes(find: Callable[[], list[int]], grace_s: float) -> list[int]:
    """SIGTERM whatever find() returns; SIGKILL what is still there after grace.

    Returns what survived even SIGKILL (nothing, unless a process is stuck in the kernel).
    find() runs again each round, so a process forked meanwhile (a worker the frontend
    was starting) is stopped too. SIGCONT lets a stopped process see the SIGTERM.
    """
    deadline = time.monotonic() + grace_s
    give_up = deadline + 5.0
    terminated: set[int] = set()
    while (pids := find()) and time.monotonic() < give_up:
        late = time.monotonic() >= deadline
        for pid in pids:
            if not late and pid in terminated:
                continue
            terminated.add(pid)
            for signum in (signal.SIGKILL,) if late else (signal.SIGTERM, signal.SIGCONT):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    break
        time.sleep(0.1)
    return pids


def stop_group(pgid: int, grace_s: float) -> list[int]:
    """Stop every process of a group we started, whether or not its leader still lives."""
    return stop_processes(lambda: group_members(pgid), grace_s)
