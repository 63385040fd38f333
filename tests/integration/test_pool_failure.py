"""A pool process dies: readiness says which, the supervisor restarts it.

The test waits until the pool serves again, so the session stack is whole for whatever
module runs next: it needs no place in the order.
"""

from __future__ import annotations

import os
import signal

from .images import cat_jpeg
from .waiting import wait_for


def test_killed_pool_turns_readyz_503_and_comes_back(stack):
    gpu = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
    os.killpg(gpu["pid"], signal.SIGKILL)
    with stack.client() as client:
        not_ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 503 and r, 10)
        assert list(not_ready.json()["pools"]) == ["gpu"]
        # The shipped config's premium falls back to the CPU pool.
        down = client.post("/predictions/resnet18", content=cat_jpeg(), headers={"X-SLA-Tier": "premium"})
        assert down.status_code == 200 and down.headers["x-tiergate-pool"] == "cpu", down.text
        # The CPU tiers never noticed.
        assert client.post("/predictions/resnet18", content=cat_jpeg()).status_code == 200

        def restarted():
            pool = next(pool for pool in stack.status()["pools"] if pool["name"] == "gpu")
            return pool["pid"] != gpu["pid"] and pool["state"] == "ready" and pool

        # The supervisor records the new process once its models have READY workers.
        assert wait_for(restarted, 180)["backend"] == "cpu-fp32"
        wait_for(lambda: client.get("/readyz").status_code == 200, 5)  # a readiness answer stands up to 1 s
        again = client.post("/predictions/resnet18", content=cat_jpeg(), headers={"X-SLA-Tier": "premium"})
    assert again.status_code == 200, again.text
