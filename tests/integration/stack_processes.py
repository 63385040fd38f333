"""Every process a test's stack started, found by an environment variable they all inherit.

The scenario sets TIERGATE_TEST_STACK before `tiergate up`; the supervisor, TorchServe's
wrapper, Java frontend and workers, Ray's GCS, raylet and workers and HAProxy all keep it,
also once orphaned, so a scan of /proc finds whatever of the stack is left.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

TAG = "TIERGATE_TEST_STACK"


def tag_this_process() -> str:
    """Give this process (and so every process it starts) a tag of its own; return it."""
    os.environ[TAG] = uuid.uuid4().hex
    return os.environ[TAG]


def stack_processes(tag: str) -> list[str]:
    """'pid command' of each live process carrying the tag, except this one."""
    wanted = f"{TAG}={tag}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if wanted in environ and state != "Z":
            found.append(f"{proc.name} {command[:120].strip()}")
    return found
