"""The shadow stage inside the gateway, with pools faked by httpx.MockTransport."""

import asyncio
import itertools
import sqlite3
import threading
import time
import uuid

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request

from gateway.call import Call, Inference, Reply
from gateway.config import parse_config
from gateway.http import HttpFront

from .fakes import HandlerTransport, by_pool, config_data, jpeg

PRIMARY = {"tabby": 0.5, "tiger_cat": 0.2, "lynx": 0.1}
OTHER = {"tiger_cat": 0.6, "tabby": 0.3, "lynx": 0.05}


def answer(top_k: dict) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(top_k), headers={"content-type": "application/json"})


def pools(candidate_handler):
    """Primary pools answer PRIMARY at once; the candidate pool answers via `candidate_handler`."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "candidate.pool":
            return await candidate_handler(request)
        return answer(PRIMARY) if request.url.host == "cpu.pool" else by_pool(request)

    return handler


def candidate(top_k: dict = PRIMARY, delay_s: float = 0.0, calls: list | None = None):
    async def handler(request):
        if calls is not None:
            calls.append(request)
        await asyncio.sleep(delay_s)
        return answer(top_k)

    return handler


@pytest.fixture
def name() -> str:
    """A fresh shadow test name, so metrics never mix between tests."""
    return "t" + uuid.uuid4().hex[:12]


class Shadowed:
    """An in-process gateway with one shadow test whose target is the `candidate` pool."""

    def __init__(
        self, tmp_path, handler, name: str, gateway_config: dict | None = None, transport=None, **shadow
    ) -> None:
        self.log_path = tmp_path / "shadow.sqlite"
        self.name = name
        self.config = parse_config(config_data(
            pools={**config_data()["pools"], "candidate": {"url": "http://candidate.pool:8100", "breaker_open_s": 0.2}},
            shadows=[{"name": name, "model": "resnet18", "sample_rate": 1.0, "target_pool": "candidate", **shadow}],
            shadow_log=str(self.log_path),
            **(gateway_config or {}),
        ))
        self.front = HttpFront(self.config, transport or HandlerTransport(handler))

        async def asgi(scope, receive, send):
            response = await self.front.handle(Request(scope, receive))
            await response(scope, receive, send)

        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://gateway")

    async def post(self, body: bytes | None = None, tier: str = "standard", request_id: str | None = None):
        headers = {"X-SLA-Tier": tier, **({"X-Request-ID": request_id} if request_id else {})}
        return await self.client.post("/predictions/resnet18", content=body or jpeg(), headers=headers)

    async def close(self) -> None:
        """What a config reload does to the old pipeline: wait for it, then close it."""
        await self.client.aclose()
        await self.front.pipeline.close_when_idle()

    def rows(self) -> list[dict]:
        with sqlite3.connect(self.log_path) as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute("SELECT * FROM shadow_samples ORDER BY id")]

    def metric(self, metric: str, **labels) -> float:
        return REGISTRY.get_sample_value(f"tiergate_shadow_{metric}", {"shadow": self.name, **labels}) or 0.0


async def test_a_candidate_answering_for_other_images_is_an_error_not_a_comparison(tmp_path, name):
    async def two_images(request):
        shape = [2, 2]
        return httpx.Response(200, content=orjson.dumps({"outputs": [
            {"name": "top5_probabilities", "datatype": "FP32", "shape": shape, "data": [0.7, 0.2, 0.6, 0.3]},
            {"name": "top5_labels", "datatype": "BYTES", "shape": shape, "data": ["tabby", "lynx", "tabby", "lynx"]},
        ]}), headers={"content-type": "application/json"})

    gateway = Shadowed(tmp_path, pools(two_images), name)
    assert (await gateway.post(request_id="one-image")).status_code == 200
    await gateway.close()
    (row,) = gateway.rows()
    assert (row["outcome"], row["error"], row["top1_same"]) == ("error", "image_count", None)
    assert gateway.metric("errors_total", call="candidate", kind="image_count") == 1


async def test_same_answers_agree_and_every_sample_is_logged_compactly(tmp_path, name):
    gateway = Shadowed(tmp_path, pools(candidate()), name)
    for i in range(3):
        assert (await gateway.post(request_id=f"same-{i}")).status_code == 200
    await gateway.close()
    rows = gateway.rows()
    assert [row["request_id"] for row in rows] == ["same-0", "same-1", "same-2"]
    assert {(row["outcome"], row["top1_same"], row["overlap"], row["max_delta"]) for row in rows} == {("agree", 1, 1.0, 0.0)}
    assert all(row["detail"] is None and row["payload"] is None for row in rows)
    assert all(row["latency_delta_ms"] is not None and row["tier"] == "standard" for row in rows)
    assert gateway.metric("mirrored_total") == 3
    assert gateway.metric("top1_total", pair="candidate", result="same") == 3
    assert gateway.metric("max_abs_delta_count", pair="candidate") == 3
    assert gateway.metric("latency_delta_seconds_count") == 3


async def test_a_disagreement_logs_both_top_k_and_deltas_never_the_payload(tmp_path, name):
    marker = b"PLANTED-" + uuid.uuid4().hex.encode()
    body = jpeg() + marker  # bytes after the JPEG's end marker: still a valid image
    gateway = Shadowed(tmp_path, pools(candidate(OTHER)), name)
    response = await gateway.post(body, request_id="differs")
    await gateway.close()
    assert response.json() == PRIMARY  # the client sees the primary's answer, untouched
    (row,) = gateway.rows()
    assert (row["outcome"], row["top1_same"], row["payload"]) == ("disagree", 0, None)
    assert row["max_delta"] == pytest.approx(0.4)
    detail = orjson.loads(row["detail"])
    assert detail["primary"] == PRIMARY and detail["candidate"] == OTHER
    assert next(iter(detail["delta"])) == "tiger_cat"  # largest delta first
    for path in tmp_path.iterdir():  # the database and its WAL
        assert marker not in path.read_bytes(), path
    assert gateway.metric("outcomes_total", outcome="disagree") == 1


async def test_log_payloads_stores_the_body_of_disagreements_only(tmp_path, name):
    bodies = iter([candidate(OTHER), candidate(PRIMARY)])

    async def alternate(request):
        return await next(bodies)(request)

    gateway = Shadowed(tmp_path, pools(alternate), name, log_payloads=True, max_concurrency=1)
    body = jpeg() + b"kept"
    await gateway.post(body)
    await asyncio.sleep(0.05)
    await gateway.post(body)
    await gateway.close()
    assert [(row["outcome"], row["payload"]) for row in gateway.rows()] == [("disagree", body), ("agree", None)]


async def test_a_slow_shadow_costs_the_primary_nothing(tmp_path, name):
    gateway = Shadowed(tmp_path, pools(candidate(delay_s=1.5)), name, max_concurrency=2)
    started = time.perf_counter()
    answers = [await gateway.post() for _ in range(6)]
    elapsed = time.perf_counter() - started
    assert [a.status_code for a in answers] == [200] * 6
    assert elapsed < 0.5  # the shadow takes 1.5 s per call
    assert (gateway.metric("mirrored_total"), gateway.metric("dropped_total", reason="full")) == (2, 4)
    await gateway.close()
    assert [row["outcome"] for row in gateway.rows()] == ["agree", "agree"]
    assert all(row["latency_delta_ms"] > 1000 for row in gateway.rows())


async def test_a_dead_shadow_counts_errors_and_the_primary_answers(tmp_path, name):
    async def refused(request):
        raise httpx.ConnectError("connection refused")

    gateway = Shadowed(tmp_path, pools(refused), name)
    answers = [await gateway.post() for _ in range(3)]
    await gateway.close()
    assert [a.status_code for a in answers] == [200] * 3
    assert gateway.metric("errors_total", call="candidate", kind="unreachable") == 3
    assert [(row["outcome"], row["error"]) for row in gateway.rows()] == [("error", "unreachable")] * 3


async def test_a_dead_target_trips_the_breaker_and_is_probed_back(tmp_path, name):
    down = True

    async def target(request):
        if down:
            raise httpx.ConnectError("connection refused")
        return answer(PRIMARY)

    async def post_and_settle():
        assert (await gateway.post()).status_code == 200
        await asyncio.sleep(0.01)  # the shadow call ends before the next request

    gateway = Shadowed(tmp_path, pools(target), name)  # candidate pool: 5 failures open it for 0.2 s
    for _ in range(8):
        await post_and_settle()
    assert gateway.metric("errors_total", call="candidate", kind="unreachable") == 5
    assert gateway.metric("dropped_total", reason="target_down") == 3  # not even a connection attempt
    down = False
    await asyncio.sleep(0.25)
    for _ in range(3):  # the first is the probe; it succeeds and closes the breaker
        await post_and_settle()
    await gateway.close()
    assert gateway.metric("dropped_total", reason="target_down") == 3
    assert [row["outcome"] for row in gateway.rows()][-3:] == ["agree"] * 3


async def test_noise_baseline_does_not_blame_the_candidate_for_a_noisy_primary(tmp_path, name):
    # The primary pool flips its answer on every call: it disagrees with itself.
    flips = itertools.cycle([PRIMARY, OTHER])

    async def handler(request):
        if request.url.host == "candidate.pool":
            return answer(OTHER)
        return answer(next(flips))

    gateway = Shadowed(tmp_path, handler, name, noise_baseline=True, max_concurrency=1)
    response = await gateway.post()
    await gateway.close()
    assert response.json() == PRIMARY
    (row,) = gateway.rows()
    assert row["outcome"] == "noisy" and row["baseline_max_delta"] == pytest.approx(0.4)
    assert orjson.loads(row["detail"])["baseline"] == OTHER
    assert gateway.metric("top1_total", pair="baseline", result="different") == 1
    assert gateway.metric("outcomes_total", outcome="disagree") == 0


async def test_cache_hits_are_compared_without_a_latency_delta(tmp_path, name):
    gateway = Shadowed(tmp_path, pools(candidate()), name, gateway_config={"models": {"resnet18": {"profile": "image-classifier", "cache": {}}}}, max_concurrency=1)
    first = await gateway.post()
    await asyncio.sleep(0.05)
    second = await gateway.post()
    await gateway.close()
    assert (first.headers["x-tiergate-cache"], second.headers["x-tiergate-cache"]) == ("miss", "hit")
    rows = gateway.rows()
    assert [row["outcome"] for row in rows] == ["agree", "agree"]
    assert rows[0]["latency_delta_ms"] is not None and rows[1]["latency_delta_ms"] is None


def log_writers() -> int:
    return sum(thread.name == "tiergate-shadow-log" for thread in threading.enumerate())


async def test_a_config_reload_ends_the_old_shadow_within_its_timeout(tmp_path, name):
    writers = log_writers()
    never = asyncio.Event()

    async def hangs(request):
        await never.wait()

    gateway = Shadowed(tmp_path, pools(hangs), name, timeout_ms=300)
    assert log_writers() == writers + 1
    for _ in range(3):
        assert (await gateway.post()).status_code == 200
    # The reload: a pipeline without shadow tests takes over, the old one is closed.
    reloaded = HttpFront(parse_config(config_data()), HandlerTransport(by_pool))
    started = time.monotonic()
    await asyncio.wait_for(gateway.close(), 5)
    assert time.monotonic() - started < 0.3 + 0.5  # the shadow calls' own timeout, and a margin
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("shadow-")]
    assert log_writers() == writers  # the old writer has stopped; the new pipeline started none
    assert [(row["outcome"], row["error"]) for row in gateway.rows()] == [("error", "timeout")] * 3
    await reloaded.pipeline.close_when_idle()


def answered_call() -> tuple[Call, Reply, float]:
    call = Call("resnet18", None, "standard", jpeg(), "hung", time.monotonic() + 5)
    return call, Reply(Inference(orjson.dumps(PRIMARY), "application/json", "cpu-int8"), "cpu"), 0.01


class NeverAnswers:
    """A transport breaking its contract (it hangs past every timeout)."""

    async def send(self, pool, request):
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        pass


async def test_closing_cancels_shadow_calls_that_outlive_their_timeout(tmp_path, name):
    gateway = Shadowed(tmp_path, None, name, transport=NeverAnswers(), timeout_ms=200)
    gateway.front.pipeline.shadows.mirror(*answered_call())
    started = time.monotonic()
    await asyncio.wait_for(gateway.close(), 5)
    assert 0.2 <= time.monotonic() - started < 0.2 + 0.5 + 0.3  # timeout plus the stage's grace
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("shadow-")]
    assert gateway.rows() == []  # cancelled calls leave no rows
