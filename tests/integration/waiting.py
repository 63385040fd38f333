"""Polling for a condition on the real stack, bounded in time."""

from __future__ import annotations

import time


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5):
    """The first truthy value of predicate(), polled until timeout_s; AssertionError after."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")
