"""Coalescing and the response cache, with pools faked by httpx.MockTransport."""

import asyncio

import httpx

from gateway.coalesce import ResponseCache

from .fakes import by_pool, gateway, jpeg


def counting(delay_s: float = 0.2, answer=None):
    calls = []

    async def handler(request):
        calls.append(request.content)
        await asyncio.sleep(delay_s)
        return answer if answer is not None else by_pool(request)

    return handler, calls


async def burst(client, bodies, tier="standard", headers=None):
    return await asyncio.gather(*(
        client.post("/predictions/resnet18", content=body, headers={"X-SLA-Tier": tier, **(headers or {})})
        for body in bodies
    ))


async def test_identical_concurrent_requests_share_one_backend_call():
    handler, calls = counting()
    async with gateway(handler) as client:
        answers = await burst(client, [jpeg()] * 8)
    assert len(calls) == 1
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("x-tiergate-coalesced") == "1" for a in answers) == 7
    assert len({a.headers["x-request-id"] for a in answers}) == 8  # each keeps its own headers


async def test_different_bodies_or_variants_are_never_merged():
    handler, calls = counting()
    other = jpeg()[:-2] + b"\x00\xd9"
    async with gateway(handler) as client:
        answers = await asyncio.gather(
            burst(client, [jpeg(), other]),
            burst(client, [jpeg()], tier="premium"),  # same body, other pool (variant)
        )
    assert len(calls) == 3
    assert not any(a.headers.get("x-tiergate-coalesced") for group in answers for a in group)


async def test_a_failing_leader_fails_its_followers_with_the_same_error_once():
    handler, calls = counting(answer=httpx.Response(500, text="worker died"))
    async with gateway(handler) as client:
        answers = await burst(client, [jpeg()] * 4)
    assert len(calls) == 1
    assert [a.status_code for a in answers] == [502] * 4
    assert len({a.json()["type"] for a in answers}) == 1


async def test_identical_requests_of_different_tiers_make_their_own_calls():
    # A follower's call would run under its leader's tier (priority, shedding, deadline): a
    # standard request must not be shed or timed as another tier, so only one tier shares a call.
    handler, calls = counting(delay_s=0.6)
    tiers = {
        "premium": {"pools": ["cpu"], "deadline_ms": 5000},
        "standard": {"pools": ["cpu"], "deadline_ms": 200},
        "batch": {"pools": ["cpu"]},
    }
    async with gateway(handler, tiers=tiers) as client:
        leader = asyncio.create_task(burst(client, [jpeg()], tier="premium"))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        (standard,) = await burst(client, [jpeg()], tier="standard")
        waited = asyncio.get_running_loop().time() - started
        (lead,) = await leader
    assert standard.status_code == 504 and waited < 0.5  # its own tier's deadline
    assert lead.status_code == 200 and "x-tiergate-coalesced" not in lead.headers
    assert len(calls) == 2


async def test_coalescing_off_sends_every_request():
    handler, calls = counting()
    async with gateway(handler, coalesce=False) as client:
        await burst(client, [jpeg()] * 4)
    assert len(calls) == 4


async def test_cache_hits_then_expires_and_never_stores_errors():
    answers = iter([httpx.Response(503, json={}), None, None])
    calls = []

    def handler(request):
        calls.append(1)
        answer = next(answers)
        return answer if answer is not None else by_pool(request)

    async with gateway(handler, models={"resnet18": {"profile": "image-classifier", "cache": {"ttl_s": 30, "max_bytes": 10_000}}}) as client:
        first = await client.post("/predictions/resnet18", content=jpeg())
        second = await client.post("/predictions/resnet18", content=jpeg())
        third = await client.post("/predictions/resnet18", content=jpeg())
    assert first.status_code == 503 and "x-tiergate-cache" not in first.headers
    assert (second.status_code, second.headers["x-tiergate-cache"]) == (200, "miss")
    assert (third.status_code, third.headers["x-tiergate-cache"]) == (200, "hit")
    assert len(calls) == 2


async def test_an_answer_from_a_failover_pool_is_never_cached_as_the_primarys():
    """premium's primary (gpu) is down for the first call, so cpu answers it; the next premium
    call must not get cpu's answer from the cache but ask gpu, whose variant it asked for."""
    gpu_up = [False]

    def handler(request):
        if request.url.host == "gpu.pool" and not gpu_up[0]:
            raise httpx.ConnectError("refused")
        return by_pool(request)

    tiers = {"premium": {"pools": ["gpu", "cpu"]}, "standard": {"pools": ["cpu"]}, "batch": {"pools": ["cpu"]}}
    cached = {"resnet18": {"profile": "image-classifier", "cache": {"ttl_s": 30, "max_bytes": 10_000}}}
    async with gateway(handler, models=cached, tiers=tiers) as client:
        failover = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
        gpu_up[0] = True
        again = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
        standard = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "standard"})
    assert failover.headers["x-tiergate-pool"] == "cpu"
    assert (again.headers["x-tiergate-pool"], again.headers["x-tiergate-cache"]) == ("gpu", "miss")
    # cpu's answer was kept under cpu's variant: a tier whose primary is cpu finds it.
    assert (standard.headers["x-tiergate-pool"], standard.headers["x-tiergate-cache"]) == ("cpu", "hit")


def test_cache_ttl_and_byte_bound():
    now = [0.0]
    cache = ResponseCache(ttl_s=10, max_bytes=100, clock=lambda: now[0])
    cache.put("a", "A", 60)
    cache.put("b", "B", 30)
    assert cache.get("a") == "A"  # a is now most recently used
    cache.put("c", "C", 30)  # 120 bytes > 100: evicts the least recently used, b
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    assert cache.bytes == 90
    cache.put("huge", "H", 101)
    assert cache.get("huge") is None
    now[0] = 10.0
    assert cache.get("a") is None and len(cache) == 1
