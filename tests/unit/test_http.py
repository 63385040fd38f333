"""The HTTP surface and error mapping, with pools faked by httpx.MockTransport."""

import asyncio

import httpx
import orjson
import pytest

from gateway import metrics

from .fakes import by_pool, gateway, jpeg


async def predict(client, tier=None, body=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if tier is not None:
        headers["X-SLA-Tier"] = tier
    return await client.post("/predictions/resnet18", content=jpeg() if body is None else body, headers=headers, **kwargs)


async def test_tiers_route_to_their_pools_and_say_so():
    async with gateway(by_pool) as client:
        premium = await predict(client, "premium")
        standard = await predict(client, "standard")
        default = await predict(client)
        shouting = await predict(client, " PREMIUM ")
    assert premium.status_code == 200
    assert premium.json() == {"tabby": 0.5, "tiger_cat": 0.2}
    assert (premium.headers["x-tiergate-tier"], premium.headers["x-tiergate-pool"]) == ("premium", "gpu")
    assert premium.headers["x-tiergate-backend"] == "tensorrt-fp16"
    assert (standard.headers["x-tiergate-pool"], standard.headers["x-tiergate-backend"]) == ("cpu", "cpu-int8")
    assert default.headers["x-tiergate-tier"] == "standard"
    assert shouting.headers["x-tiergate-pool"] == "gpu"
    assert premium.headers["x-request-id"]


async def test_versioned_path_and_request_id_reach_the_pool():
    seen = []

    def handler(request):
        seen.append((request.url.path, request.headers["x-request-id"]))
        return by_pool(request)

    async with gateway(handler) as client:
        response = await client.post(
            "/predictions/resnet18/1.0", content=jpeg(), headers={"X-Request-ID": "abc-123"}
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123"
    assert seen == [("/predictions/resnet18/1.0", "abc-123")]


@pytest.mark.parametrize(
    "kwargs, status, error_type, words",
    [
        ({"tier": "gold"}, 400, "BadRequest", "valid tiers: batch, premium, standard"),
        ({"body": b""}, 400, "BadRequest", "empty body"),
        ({"body": b"hello, not an image"}, 400, "BadRequest", "not a JPEG or PNG"),
        ({"body": b"\xff\xd8\xff" + b"x" * 2000}, 413, "PayloadTooLarge", "1024-byte limit"),
        ({"headers": {"Content-Type": "application/json"}}, 415, "UnsupportedMediaType", "raw image"),
    ],
)
async def test_bad_input_gets_a_json_4xx_and_never_reaches_a_pool(kwargs, status, error_type, words):
    calls = []

    def handler(request):
        calls.append(request)
        return by_pool(request)

    async with gateway(handler) as client:
        response = await predict(client, **kwargs)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == error_type and words in body["message"]
    assert calls == []


async def test_oversized_streamed_body_is_refused_without_content_length():
    async def chunks():
        for _ in range(100):
            yield b"\xff\xd8\xff" + b"x" * 100

    async with gateway(by_pool) as client:
        response = await client.post("/predictions/resnet18", content=chunks())
    assert response.status_code == 413


async def test_unknown_model_method_and_path():
    async with gateway(by_pool) as client:
        unknown_model = await client.post("/predictions/nosuch", content=jpeg())
        wrong_method = await client.get("/predictions/resnet18")
        unknown_path = await client.get("/management/models")
    assert unknown_model.status_code == 404 and "resnet18" in unknown_model.json()["message"]
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST, PUT"
    assert unknown_path.status_code == 404


@pytest.mark.parametrize(
    "pool_answer, status, error_type",
    [
        (httpx.Response(503, json={"code": 503, "message": "queue full"}), 503, "PoolOverloaded"),
        (httpx.Response(503, json={"code": 503, "type": "InternalServerException", "message": "Prediction failed"}), 422, "ModelFailed"),
        (httpx.Response(400, json={"code": 400, "message": "cannot decode image"}), 400, "InvalidInput"),
        (httpx.Response(413, text="too big"), 413, "InvalidInput"),
        (httpx.Response(404, json={"message": "Model not found"}), 502, "PoolMisconfigured"),
        (httpx.Response(500, text="worker died"), 502, "PoolError"),
        (httpx.Response(401, json={"message": "PoolTokenRejected"}), 502, "PoolAuthFailed"),
        (httpx.Response(400, json={"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}), 502, "PoolAuthFailed"),
    ],
)
async def test_pool_answers_map_to_gateway_errors(pool_answer, status, error_type):
    async with gateway(lambda request: pool_answer) as client:
        response = await predict(client, "standard")
    assert response.status_code == status
    assert response.json()["type"] == error_type
    assert response.headers["x-tiergate-pool"] == "cpu"
    assert response.headers["x-tiergate-tier"] == "standard"
    if status == 503:
        assert response.headers["retry-after"] == "1"
    if status == 400:
        assert response.json()["message"] == "cannot decode image"


async def test_unreachable_pool_is_502_and_slow_pool_is_504_at_the_deadline():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    async with gateway(refuse) as client:
        down = await predict(client, "standard")
    assert down.status_code == 502 and down.json()["type"] == "PoolUnavailable"

    async def stall(request):
        await asyncio.sleep(request.extensions["timeout"]["read"] + 0.01)
        raise httpx.ReadTimeout("slow", request=request)

    tiers = {"standard": {"pools": ["cpu"], "deadline_ms": 150}, "premium": {"pools": ["gpu"]}}
    async with gateway(stall, tiers=tiers) as client:
        slow = await predict(client, "standard")
    assert slow.status_code == 504 and slow.json()["type"] == "DeadlineExceeded"


async def test_deadline_becomes_the_pool_call_timeout():
    timeouts = []

    def handler(request):
        timeouts.append(request.extensions["timeout"]["read"])
        return by_pool(request)

    async with gateway(handler) as client:
        await predict(client, "premium")
    assert 1.5 < timeouts[0] <= 2.0  # premium's 2000 ms deadline, minus time already spent


async def test_requests_are_counted_by_tier_pool_model_and_code():
    def count(tier, pool, code, backend):
        return metrics.REQUESTS.labels(tier, pool, "resnet18", code, backend)._value.get()

    before_ok = count("batch", "cpu", "200", "cpu-int8")
    before_fail = count("batch", "cpu", "503", "-")
    answers = iter([None, httpx.Response(503, json={})])

    def handler(request):
        answer = next(answers)
        return answer if answer is not None else by_pool(request)

    async with gateway(handler) as client:
        await predict(client, "batch")
        await predict(client, "batch")
        exposition = (await client.get("/metrics")).text
    assert count("batch", "cpu", "200", "cpu-int8") == before_ok + 1
    assert count("batch", "cpu", "503", "-") == before_fail + 1
    assert 'tiergate_requests_total{backend="cpu-int8",code="200",model="resnet18",pool="cpu",tier="batch"}' in exposition
    assert "tiergate_request_duration_seconds_bucket" in exposition


async def test_readyz_names_the_pool_that_is_down():
    def handler(request):
        if request.url.host == "gpu.pool":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"status": "Healthy"})

    async with gateway(handler) as client:
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert ready.status_code == 503
    assert list(ready.json()["pools"]) == ["gpu"]
    assert alive.status_code == 200
    assert orjson.loads(alive.content) == {"status": "alive"}
