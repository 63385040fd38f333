"""Endurance in-process: rounds of concurrent requests ending every way a request can end
(served, coalesced, refused by the model, pool errors, pool unreachable, deadlines, shed at
the queue, clients gone mid-body) leave nothing behind: no asyncio task, no coalescing
flight, no held pool slot or queued waiter, and no memory growth from round to round.
(The live soak, bench/soak.py, watches RSS and descriptors of the real processes; asyncio
tasks can only be counted from inside.)"""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc

import httpx

from .harness import Gateway
from .inputs import PREDICT, SMALL_IMAGES

ROUNDS, PER_ROUND = 12, 60


async def mixed_pool(request: httpx.Request) -> httpx.Response:
    """Answers by the tag the test appended after the image's bytes."""
    tag = request.content[-4:]
    await asyncio.sleep(0.005)
    if tag == b"slow":
        await asyncio.sleep(0.5)  # past the tier deadline
    if tag == b"down":
        raise httpx.ConnectError("refused", request=request)
    if tag == b"fail":
        return httpx.Response(500, text="worker died")
    if tag == b"bad!":
        return httpx.Response(400, json={"code": 400, "message": "cannot decode image"})
    return httpx.Response(200, json={"tabby": 0.5}, headers={"X-Tiergate-Backend": "cpu-int8"})


def test_rounds_of_every_outcome_leave_nothing_behind():
    gateway = Gateway(
        tiers={
            "premium": {"pools": ["gpu"], "deadline_ms": 200, "priority": 2},
            "standard": {"pools": ["cpu"], "deadline_ms": 200, "priority": 1},
            "batch": {"pools": ["cpu"], "deadline_ms": 200},
        },
        pools={
            "gpu": {"url": "http://gpu.pool:8080", "max_concurrency": 4, "max_queue": 4, "breaker_open_s": 0.05},
            "cpu": {"url": "http://cpu.pool:8090", "max_concurrency": 4, "max_queue": 4, "breaker_open_s": 0.05},
        },
    )
    gateway.front.pipeline.pools.transport.handler = mixed_pool
    tags = [b"okay", b"okay", b"same", b"slow", b"down", b"fail", b"bad!"]

    async def one(index: int) -> int:
        tag = tags[index % len(tags)]
        body = SMALL_IMAGES[0] + (tag if tag == b"same" else str(index).encode() + tag)  # "same" coalesces
        tier = (b"premium", b"standard", b"batch")[index % 3]
        answer = await gateway._call("POST", PREDICT, [(b"x-sla-tier", tier)], [body], disconnect=index % 11 == 0)
        return answer.status

    async def rounds() -> tuple[list[int], list[int], set[int]]:
        tasks_after, memory_after, statuses = [], [], set()
        for _ in range(ROUNDS):
            statuses |= set(await asyncio.gather(*(one(index) for index in range(PER_ROUND))))
            await asyncio.sleep(0.6)  # let abandoned pool calls run out their deadline
            gc.collect()
            tasks_after.append(len(asyncio.all_tasks()))
            memory_after.append(tracemalloc.get_traced_memory()[0])
        return tasks_after, memory_after, statuses

    logging.disable(logging.CRITICAL)  # captured log records would be the only thing growing
    tracemalloc.start()
    try:
        tasks_after, memory_after, statuses = gateway.loop.run_until_complete(rounds())
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
        gateway.close()

    assert {200, 400, 429, 502, 504} <= statuses, statuses  # every ending was exercised
    assert tasks_after == [1] * ROUNDS  # only the test's own task is left
    pipeline = gateway.front.pipeline
    assert pipeline.flights.in_flight == 0
    assert all(gate.inflight == 0 and gate.queued == 0 for gate in pipeline.router.gates.values())
    settled = memory_after[2:]
    assert settled[-1] - settled[0] < 256 * 1024, memory_after  # no growth once warm
