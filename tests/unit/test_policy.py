"""Tier policy with faked pools: keys, limits and shedding, spillover, breakers, retries."""

import asyncio
import time

import httpx
import pytest

from gateway.auth import digest
from gateway.breaker import Breaker, State
from gateway.call import Call
from gateway.errors import GatewayError
from gateway.config import parse_config
from gateway.http import HttpFront
from gateway.limits import PoolGate
from gateway.pool_client import PoolTimeout
from gateway.route import Router
from starlette.requests import Request

from .fakes import HandlerTransport, by_pool, config_data, gateway, jpeg


def keyed(**overrides):
    keys = [
        {"name": "shop", "sha256": digest("shop-key"), "tiers": ["premium", "standard"]},
        {"name": "etl", "sha256": digest("etl-key"), "tiers": ["batch"], "default_tier": "batch"},
    ]
    return {"auth": {"keys": keys}, **overrides}


@pytest.mark.parametrize(
    "key, tier, status, pool",
    [
        ("shop-key", "premium", 200, "gpu"),
        ("shop-key", None, 200, "cpu"),
        ("etl-key", None, 200, "cpu"),
        ("etl-key", "premium", 403, None),
        ("shop-key", "batch", 403, None),
        (None, "premium", 401, None),
        ("wrong-key", "premium", 401, None),
    ],
)
async def test_api_keys_decide_the_tiers(key, tier, status, pool):
    headers = {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if tier:
        headers["X-SLA-Tier"] = tier
    async with gateway(by_pool, **keyed()) as client:
        response = await client.post("/predictions/resnet18", content=jpeg(), headers=headers)
    assert response.status_code == status, response.text
    if pool:
        assert response.headers["x-tiergate-pool"] == pool
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if status == 403:
        assert "allowed:" in response.json()["message"]


async def test_keys_from_an_env_var(monkeypatch):
    monkeypatch.setenv("TIERGATE_KEYS", f'[{{name: ci, sha256: "{digest("ci-key")}", tiers: [batch]}}]')
    async with gateway(by_pool, auth={"keys_env": "TIERGATE_KEYS"}) as client:
        ok = await client.post("/predictions/resnet18", content=jpeg(), headers={"Authorization": "Bearer ci-key", "X-SLA-Tier": "batch"})
        no = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "batch"})
    assert (ok.status_code, no.status_code) == (200, 401)


async def test_full_queue_sheds_the_lowest_priority_first():
    gate = PoolGate("cpu", capacity=1, queue_bound=2)
    far = time.monotonic() + 5
    await gate.acquire("standard", 1, True, far)  # takes the only slot
    batch_waiters = [asyncio.create_task(gate.acquire("batch", 0, True, far)) for _ in range(2)]
    await asyncio.sleep(0)
    premium = asyncio.create_task(gate.acquire("premium", 2, False, far))
    await asyncio.sleep(0.01)
    # The premium arrival evicted the newest batch waiter at once.
    assert batch_waiters[1].done()
    with pytest.raises(GatewayError) as shed:
        batch_waiters[1].result()
    assert shed.value.status == 429 and shed.value.headers["Retry-After"] == "1"
    # A further batch arrival outranks nobody: refused at once, no waiting.
    started = time.monotonic()
    with pytest.raises(GatewayError) as refused:
        await gate.acquire("batch", 0, True, far)
    assert refused.value.status == 429 and time.monotonic() - started < 0.05
    # The freed slot goes to premium before the older batch waiter.
    gate.release()
    await asyncio.sleep(0.01)
    assert premium.done() and not batch_waiters[0].done()
    gate.release()
    await asyncio.sleep(0.01)
    assert batch_waiters[0].done()


async def test_queued_call_times_out_at_its_deadline_and_frees_its_place():
    gate = PoolGate("cpu", capacity=1, queue_bound=1)
    await gate.acquire("standard", 1, True, time.monotonic() + 5)
    started = time.monotonic()
    with pytest.raises(GatewayError) as late:
        await gate.acquire("standard", 1, True, time.monotonic() + 0.1)
    assert late.value.status == 504 and 0.09 < time.monotonic() - started < 0.5
    assert gate.queued == 0


def test_breaker_opens_after_consecutive_failures_and_probes_back():
    now = [0.0]
    breaker = Breaker(failures=3, open_s=5.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failed()
    breaker.succeeded()  # consecutive: a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state is State.OPEN and not breaker.allow()
    now[0] = 5.0
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failed()
    assert breaker.state is State.OPEN
    now[0] = 10.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is State.CLOSED and breaker.allow()


def test_breaker_opens_on_an_error_rate_without_consecutive_failures():
    breaker = Breaker(failures=5, open_s=5.0, error_rate=0.5, window=10, clock=lambda: 0.0)
    for _ in range(4):  # every other call fails: never two failures in a row
        breaker.succeeded()
        breaker.failed()
    assert breaker.state is State.CLOSED  # 4 of 8: the window is not full yet
    breaker.succeeded()
    breaker.failed()
    assert breaker.state is State.OPEN  # 5 of the last 10 failed


def test_breaker_error_rate_counts_only_the_window():
    breaker = Breaker(failures=5, open_s=5.0, error_rate=0.5, window=10, clock=lambda: 0.0)
    for _ in range(4):
        breaker.failed()
        breaker.succeeded()
    for _ in range(12):
        breaker.succeeded()
    for _ in range(4):
        breaker.failed()
        breaker.succeeded()
    assert breaker.state is State.CLOSED  # 4 of the last 10: old failures have left the window


FAILOVER = {
    "tiers": {
        "premium": {"pools": ["gpu", "cpu"]},
        "standard": {"pools": ["cpu"], "spillover": ["gpu"]},
        "batch": {"pools": ["cpu"]},
    },
    "pools": {
        "gpu": {"url": "http://gpu.pool:8080", "breaker_failures": 2, "breaker_open_s": 60, "max_concurrency": 2, "reserve": 1},
        "cpu": {"url": "http://cpu.pool:8090", "max_concurrency": 1, "max_queue": 4},
    },
}


async def test_premium_fails_over_to_cpu_and_the_breaker_stops_trying_gpu():
    gpu_calls = []

    def handler(request):
        if request.url.host == "gpu.pool":
            gpu_calls.append(request)
            raise httpx.ConnectError("refused", request=request)
        return by_pool(request)

    async with gateway(handler, **FAILOVER) as client:
        answers = [await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"}) for _ in range(5)]
        exposition = (await client.get("/metrics")).text
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.headers["x-tiergate-pool"] for a in answers} == {"cpu"}
    assert len(gpu_calls) == 2  # then the breaker opened: no more calls to the dead pool
    assert 'tiergate_breaker_state{pool="gpu"} 2.0' in exposition


async def test_call_dropped_mid_flight_is_rerun_on_the_next_pool():
    calls = []

    def handler(request):
        calls.append(request.url.host)
        if request.url.host == "gpu.pool":
            raise httpx.RemoteProtocolError("peer closed the connection", request=request)
        return by_pool(request)

    async with gateway(handler, **FAILOVER) as client:
        answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
        standard = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "standard"})
    assert answer.status_code == 200 and answer.headers["x-tiergate-pool"] == "cpu"
    assert calls[:2] == ["gpu.pool", "cpu.pool"]
    assert standard.status_code == 200  # a tier without the dead pool never notices


async def test_dropped_call_on_the_last_pool_is_a_502():
    def handler(request):
        raise httpx.RemoteProtocolError("peer closed the connection", request=request)

    async with gateway(handler, **FAILOVER) as client:
        answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
    assert answer.status_code == 502 and answer.json()["type"] == "PoolDropped"


async def test_overloaded_pool_hands_the_call_to_the_next_once():
    calls = []

    def handler(request):
        calls.append(request.url.host)
        if request.url.host == "gpu.pool":
            return httpx.Response(503, json={"message": "queue full"})
        return by_pool(request)

    async with gateway(handler, **FAILOVER) as client:
        answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
    assert answer.status_code == 200 and answer.headers["x-tiergate-pool"] == "cpu"
    assert calls == ["gpu.pool", "cpu.pool"]


async def test_standard_spills_to_gpu_only_within_headroom_beyond_the_reserve():
    release = asyncio.Event()

    async def handler(request):
        await release.wait()
        return by_pool(request)

    async with gateway(handler, coalesce=False, **FAILOVER) as client:
        send = lambda: client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "standard"})
        # cpu has 1 slot; gpu has 2 with 1 reserved for premium: one spill, then queueing on cpu.
        tasks = [asyncio.create_task(send()) for _ in range(3)]
        await asyncio.sleep(0.1)
        release.set()
        answers = await asyncio.gather(*tasks)
    pools = sorted(a.headers["x-tiergate-pool"] for a in answers)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert pools == ["cpu", "cpu", "gpu"]


async def test_a_pool_without_a_queue_refuses_at_once():
    gate = PoolGate("cpu", capacity=1, queue_bound=0)
    far = time.monotonic() + 5
    await gate.acquire("standard", 1, True, far)
    with pytest.raises(GatewayError) as shed:
        await gate.acquire("standard", 1, True, far)
    with pytest.raises(GatewayError) as refused:
        await gate.acquire("premium", 2, False, far)
    assert (shed.value.status, refused.value.status) == (429, 503)


async def test_a_pool_in_both_pools_and_spillover_is_called_once():
    calls, release = [], asyncio.Event()

    async def handler(request):
        calls.append(request.url.host)
        if request.url.host == "gpu.pool":
            await release.wait()
            return by_pool(request)
        return httpx.Response(503, json={"message": "queue full"})

    pools = {"gpu": {"url": "http://gpu.pool:8080", "max_concurrency": 1}, "cpu": {"url": "http://cpu.pool:8090"}}
    tiers = {"premium": {"pools": ["gpu", "cpu"], "spillover": ["cpu"]}, "standard": {"pools": ["cpu"]}, "batch": {"pools": ["cpu"]}}
    async with gateway(handler, coalesce=False, pools=pools, tiers=tiers) as client:
        send = lambda: client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
        holder = asyncio.create_task(send())  # takes gpu's only slot
        await asyncio.sleep(0.05)
        calls.clear()
        answer = await send()  # spills to cpu, which is busy: no second call to cpu
        release.set()
        await holder
    assert answer.status_code == 503 and calls == ["cpu.pool"]


@pytest.mark.parametrize("min_timeout_s, batch_status", [(None, 200), (0.01, 503)])
async def test_a_tight_deadline_opens_no_breaker_on_a_healthy_pool(min_timeout_s, batch_status):
    async def slow(request):
        await asyncio.sleep(0.1)
        return by_pool(request)

    cpu = {"url": "http://cpu.pool:8090", "breaker_failures": 2}
    if min_timeout_s is not None:
        cpu["breaker_min_timeout_s"] = min_timeout_s
    pools = {"gpu": {"url": "http://gpu.pool:8080"}, "cpu": cpu}
    tiers = {"premium": {"pools": ["gpu"]}, "standard": {"pools": ["cpu"], "deadline_ms": 50}, "batch": {"pools": ["cpu"]}}
    async with gateway(slow, coalesce=False, pools=pools, tiers=tiers) as client:
        standard = [await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "standard"}) for _ in range(2)]
        batch = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "batch"})
    assert [a.status_code for a in standard] == [504, 504]
    # By default a 50 ms budget is too short to blame the pool; counted, it opens the breaker for all.
    assert batch.status_code == batch_status


async def test_keys_from_an_env_var_must_name_configured_tiers(monkeypatch):
    monkeypatch.setenv("TIERGATE_KEYS", f'[{{name: old, sha256: "{digest("k")}", tiers: [gold], default_tier: gold}}]')
    with pytest.raises(ValueError, match=r"API key 'old' names unknown tiers \['gold'\]"):
        gateway(by_pool, auth={"keys_env": "TIERGATE_KEYS"})


def uploading(body: bytes, pause_s: float, started: asyncio.Event | None = None):
    """An ASGI request whose body's second half arrives `pause_s` after its first."""
    chunks = [(body[:10], True), (body[10:], False)]

    async def receive():
        chunk, more = chunks.pop(0)
        if more and started is not None:
            started.set()
        if not more:
            await asyncio.sleep(pause_s)
        return {"type": "http.request", "body": chunk, "more_body": more}

    scope = {
        "type": "http", "method": "POST", "path": "/predictions/resnet18", "query_string": b"",
        "headers": [(b"content-type", b"image/jpeg"), (b"x-sla-tier", b"premium")],
    }
    return Request(scope, receive)


async def test_the_deadline_runs_from_arrival_upload_included():
    timeouts = []

    def handler(request):
        timeouts.append(request.extensions["timeout"]["read"])
        return by_pool(request)

    front = HttpFront(parse_config(config_data()), HandlerTransport(handler))
    response = await front.handle(uploading(jpeg(), 0.3))
    assert response.status_code == 200
    assert timeouts[0] <= 1.71  # premium's 2000 ms, less the 0.3 s upload


class ClosingTransport(HandlerTransport):
    """Like aiohttp's: after aclose, a send fails as a gateway bug would."""

    closed = False

    async def send(self, pool, request):
        if self.closed:
            raise RuntimeError("Session is closed")
        return await super().send(pool, request)

    async def aclose(self):
        self.closed = True


async def test_a_reload_waits_for_a_request_still_uploading():
    old = HttpFront(parse_config(config_data()), ClosingTransport(by_pool))
    uploading_started = asyncio.Event()
    request = asyncio.create_task(old.handle(uploading(jpeg(), 0.2, uploading_started)))
    await uploading_started.wait()
    drained = asyncio.create_task(old.pipeline.close_when_idle())  # what a reload does to the old front
    await asyncio.sleep(0.05)
    assert not drained.done()
    assert (await request).status_code == 200
    await asyncio.wait_for(drained, 1)
    assert old.pipeline.pools.transport.closed


async def test_the_reserve_is_divided_among_replicas_like_the_slots():
    # gpu: 4 slots, 2 reserved; over 2 replicas each holds 2 slots and keeps 1 back, so one
    # standard call may still spill there (the whole reserve per replica would leave none).
    release = asyncio.Event()

    async def handler(request):
        await release.wait()
        return by_pool(request)

    pools = {
        "gpu": {"url": "http://gpu.pool:8080", "max_concurrency": 4, "reserve": 2},
        "cpu": {"url": "http://cpu.pool:8090", "max_concurrency": 2, "max_queue": 4},
    }
    async with gateway(handler, coalesce=False, replicas=2, pools=pools, tiers=FAILOVER["tiers"]) as client:
        send = lambda: client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "standard"})
        tasks = [asyncio.create_task(send()) for _ in range(3)]
        await asyncio.sleep(0.1)
        release.set()
        answers = await asyncio.gather(*tasks)
    assert sorted(a.headers["x-tiergate-pool"] for a in answers) == ["cpu", "cpu", "gpu"]


async def test_a_hung_pool_leaves_the_next_pool_time_to_answer():
    """Issue 18, item 6: a pool that hangs (rather than refuses) used to take the whole deadline."""
    calls = []

    async def handler(request):
        calls.append((request.url.host, request.extensions["timeout"]["read"]))
        if request.url.host == "gpu.pool":
            await asyncio.Event().wait()  # never answers
        return by_pool(request)

    tiers = {"premium": {"pools": ["gpu", "cpu"], "deadline_ms": 1000}, "standard": {"pools": ["cpu"]}, "batch": {"pools": ["cpu"]}}
    async with gateway(handler, tiers=tiers) as client:
        answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
        exposition = (await client.get("/metrics")).text
    assert answer.status_code == 200 and answer.headers["x-tiergate-pool"] == "cpu"
    (first, first_budget), (second, second_budget) = calls
    assert (first, second) == ("gpu.pool", "cpu.pool")
    assert first_budget == pytest.approx(0.5, abs=0.05)  # the deadline shared by the two pools
    assert 0.3 < second_budget <= 0.5  # the last pool gets all the time left
    assert 'tiergate_retries_total{pool="gpu",reason="timeout",tier="premium"} 1.0' in exposition


async def test_an_attempt_timeout_from_the_config_and_a_504_naming_the_pool():
    async def hangs(request):
        await asyncio.Event().wait()

    tiers = {
        "premium": {"pools": ["gpu", "cpu"], "deadline_ms": 600, "attempt_timeout_ms": 100},
        "standard": {"pools": ["cpu"]}, "batch": {"pools": ["cpu"]},
    }
    async with gateway(hangs, tiers=tiers) as client:
        started = time.monotonic()
        answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
        elapsed = time.monotonic() - started
        exposition = (await client.get("/metrics")).text
    # gpu had 100 ms, cpu (the last pool) the other ~500: the 504 names cpu, coalesced or not.
    assert answer.status_code == 504 and 0.5 < elapsed < 1.5
    assert "'cpu'" in answer.json()["message"] and answer.headers["x-tiergate-pool"] == "cpu"
    assert 'tiergate_requests_total{backend="-",code="504",model="resnet18",pool="cpu",tier="premium"} 1.0' in exposition


async def test_a_timeout_that_fires_late_opens_no_breaker():
    """Issue 18, item 3: a replica stopped for a while wakes to timers long past; that says
    nothing about the pool, whose breaker must stay closed."""
    config = parse_config(config_data(pools={"gpu": {"url": "http://gpu.pool:8080", "breaker_failures": 1},
                                             "cpu": {"url": "http://cpu.pool:8090"}}))
    router = Router(config, 1)

    async def stalled(pool, call, budget):
        time.sleep(budget + 0.6)  # the whole process stops: the timer fires late
        raise PoolTimeout("late")

    async def on_time(pool, call, budget):
        await asyncio.sleep(budget)
        raise PoolTimeout("on time")

    call = lambda: Call(model="resnet18", version=None, tier="premium", body=b"x", request_id="r",
                        deadline=time.monotonic() + 1.2)
    with pytest.raises(GatewayError):
        await router.dispatch(call(), stalled)
    assert router.breakers["gpu"].state is State.CLOSED
    with pytest.raises(GatewayError):
        await router.dispatch(call(), on_time)
    assert router.breakers["gpu"].state is State.OPEN


@pytest.mark.parametrize("failure", [
    httpx.Response(500, json={"message": "worker died"}),
    httpx.Response(400, json={"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}),
], ids=["pool-error", "stale-token"])
async def test_a_pool_failing_the_call_hands_it_to_the_next(failure):
    """A restarted pool has a new key until the gateway re-reads it; a pool's 5xx is no fault of the call."""
    calls = []

    def handler(request):
        calls.append(request.url.host)
        return failure if request.url.host == "gpu.pool" else by_pool(request)

    async with gateway(handler, **FAILOVER) as client:
        answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": "premium"})
    assert answer.status_code == 200 and answer.headers["x-tiergate-pool"] == "cpu"
    assert calls == ["gpu.pool", "cpu.pool"]
