"""Each pool's limits shared among the replicas that route to it, as Serve scales them.

A routing replica holds its share of every pool's `max_concurrency` and `reserve`
(`Router.divide`). The config's replica count is only where that starts: Serve's autoscaler
(the RayService on KubeRay scales the gateway between its min and max replicas) changes the
count, and shares fixed at the start would let a gateway scaled from 1 to 8 replicas send
each pool 8 times its limit. So a routing replica asks Serve now and then how many replicas
its deployment has, and divides again when that changes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from . import metrics
from .route import Router

log = logging.getLogger("tiergate")

# Serve's autoscaler waits 30 s before adding replicas (k8s_render): a few seconds late is fine.
POLL_S = 5.0


def serve_replicas() -> int:
    """How many replicas of the calling replica's deployment are serving or about to (blocking:
    a call to the Serve controller). Starting ones count, so shares shrink before they take
    traffic; stopping ones take no new calls."""
    from ray import serve

    context = serve.get_replica_context()
    deployment = serve.status().applications[context.app_name].deployments[context.deployment]
    return max(1, sum(n for state, n in deployment.replica_states.items() if state != "STOPPING"))


class ReplicaShares:
    def __init__(self, count: Callable[[], int] = serve_replicas, poll_s: float = POLL_S) -> None:
        self.replicas: int | None = None  # None until Serve has answered once
        self._count = count
        self._poll_s = poll_s
        self._router: Router | None = None
        self._task: asyncio.Task | None = None

    def route_with(self, router: Router) -> None:
        """`router` now takes this replica's calls (a new config's pipeline): give it the current
        shares, and follow the count from here on."""
        self._router = router
        self._apply()
        if self._task is None:
            self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                replicas = await asyncio.to_thread(self._count)
            except Exception as exc:  # the controller restarting, say: keep the shares there are
                log.warning("could not count the gateway's replicas, keeping the pools' shares: %s", exc)
            else:
                if replicas != self.replicas:
                    self.replicas = replicas
                    self._apply()
            await asyncio.sleep(self._poll_s)

    def _apply(self) -> None:
        assert self._router is not None
        if self.replicas is not None:
            self._router.divide(self.replicas)
        for pool, gate in self._router.gates.items():
            metrics.POOL_SLOTS.labels(pool).set(gate.capacity)
