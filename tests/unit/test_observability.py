"""Pool metrics joined into /metrics, and structured access logs."""

import asyncio
import json
import logging
import time

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.pool_client import PoolResponse, _batch_size

from .fakes import by_pool, gateway, jpeg

# As TorchServe writes them (its Java client: counters without _total, a trailing comma).
TORCHSERVE_METRICS = """# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="resnet18",model_version="default",hostname="h",} 7.0
# HELP ts_queue_latency_microseconds Cumulative queue duration in microseconds
# TYPE ts_queue_latency_microseconds counter
ts_queue_latency_microseconds{model_name="resnet18",model_version="default",hostname="h",} 1234.5
# HELP Requests2XX Logged 2XX requests
# TYPE Requests2XX counter
Requests2XX{Level="Host",Hostname="h",} 5.0
# HELP CPUUtilization CPU utilization
# TYPE CPUUtilization gauge
CPUUtilization 12.5
"""

POOLS = {
    "gpu": {"url": "http://gpu.pool:8080", "metrics_url": "http://gpu.pool:8082/metrics"},
    "cpu": {"url": "http://cpu.pool:8090", "metrics_url": "http://cpu.pool:8092/metrics"},
}


async def test_pool_series_are_reexported_with_a_pool_label():
    def handler(request):
        if request.url.path == "/metrics":
            return httpx.Response(200, text=TORCHSERVE_METRICS)
        return by_pool(request)

    async with gateway(handler, pools=POOLS) as client:
        text = (await client.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }
    for pool in ("gpu", "cpu"):
        # Each pool series under its own name and labels, plus `pool`; nothing renamed.
        for family in text_string_to_metric_families(TORCHSERVE_METRICS):
            for sample in family.samples:
                assert samples[(sample.name, tuple(sorted({**sample.labels, "pool": pool}.items())))] == sample.value
        assert samples[("tiergate_pool_scrape_up", (("pool", pool),))] == 1.0
    assert "Requests2XX_total" not in text and "CPUUtilization_total" not in text
    # One HELP and TYPE per family, whichever pools export it (else Prometheus refuses the scrape).
    assert text.count("# TYPE Requests2XX counter") == 1 and text.count("# TYPE CPUUtilization gauge") == 1
    assert "# TYPE tiergate_requests_total counter" in text  # the gateway's own series as before


async def test_unreadable_pool_exposition_is_left_out():
    def handler(request):
        if request.url.path == "/metrics":
            return httpx.Response(200, text="this is {not an exposition\n")
        return by_pool(request)

    async with gateway(handler, pools=POOLS) as client:
        text = (await client.get("/metrics")).text
    assert "not an exposition" not in text and 'tiergate_pool_scrape_up{pool="gpu"} 1.0' in text
    list(text_string_to_metric_families(text))  # the whole scrape stays readable


async def test_a_dead_or_stalled_pool_never_slows_metrics():
    async def handler(request):
        if request.url.host == "gpu.pool":
            await asyncio.sleep(30)  # stalls: the scrape must give up
        if request.url.host == "cpu.pool":
            raise httpx.ConnectError("refused", request=request)
        return by_pool(request)

    async with gateway(handler, pools=POOLS) as client:
        started = time.monotonic()
        response = await client.get("/metrics")
        elapsed = time.monotonic() - started
    assert response.status_code == 200 and elapsed < 1.5
    assert 'tiergate_pool_scrape_up{pool="gpu"} 0.0' in response.text
    assert 'tiergate_pool_scrape_up{pool="cpu"} 0.0' in response.text


async def test_access_log_is_one_json_line_without_the_payload(caplog):
    marker = b"PAYLOAD-MARKER-7f3a"
    body = jpeg() + marker
    with caplog.at_level(logging.INFO, logger="tiergate.access"):
        async with gateway(by_pool) as client:
            await client.post("/predictions/resnet18", content=body, headers={"X-SLA-Tier": "premium", "X-Request-ID": "req-1"})
            await client.post("/predictions/resnet18", content=b"not an image " + marker, headers={"X-Request-ID": "req\n2"})
    lines = [r.getMessage() for r in caplog.records if r.name == "tiergate.access"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    ok, bad = (json.loads(line) for line in lines)
    assert ok["request_id"] == "req-1" and ok["status"] == 200
    assert (ok["tier"], ok["pool"], ok["backend"]) == ("premium", "gpu", "tensorrt-fp16")
    assert bad["status"] == 400 and bad["request_id"] != "req\n2"  # a control character: replaced
    assert "PAYLOAD-MARKER" not in caplog.text


def batch_size_series(pool: str) -> dict[str, float]:
    """tiergate_pool_batch_size's count, sum and le="4"/le="8" buckets for one pool, so far."""
    name = "tiergate_pool_batch_size"
    samples = {"count": (f"{name}_count", {}), "sum": (f"{name}_sum", {}),
               "4.0": (f"{name}_bucket", {"le": "4.0"}), "8.0": (f"{name}_bucket", {"le": "8.0"})}
    return {key: REGISTRY.get_sample_value(sample, {"pool": pool, **le}) or 0.0 for key, (sample, le) in samples.items()}


async def test_pool_batch_sizes_are_counted_from_the_handlers_header():
    def handler(request):
        response = by_pool(request)
        # The CPU pool reports a batch of 8; a pool sending garbage counts nothing.
        response.headers["X-Tiergate-Batch-Size"] = {"cpu.pool": "8", "gpu.pool": "eight"}[request.url.host]
        return response

    cpu_before, gpu_before = batch_size_series("cpu"), batch_size_series("gpu")
    async with gateway(handler) as client:
        for tier in ("standard", "batch", "premium"):
            answer = await client.post("/predictions/resnet18", content=jpeg(), headers={"X-SLA-Tier": tier})
            assert answer.status_code == 200

    cpu_after = batch_size_series("cpu")
    assert cpu_after["count"] - cpu_before["count"] == 2
    assert cpu_after["sum"] - cpu_before["sum"] == 16
    assert cpu_after["8.0"] - cpu_before["8.0"] == 2 and cpu_after["4.0"] == cpu_before["4.0"]
    assert batch_size_series("gpu")["count"] == gpu_before["count"]


@pytest.mark.parametrize("headers, expected", [
    ({"x-tiergate-batch-size": "8"}, 8), ({}, None), ({"x-tiergate-batch-size": ""}, None),
    ({"x-tiergate-batch-size": "0"}, None), ({"x-tiergate-batch-size": "-1"}, None),
    ({"x-tiergate-batch-size": "\u0663"}, None),  # a non-ASCII digit int() would accept
])
def test_batch_size_header_is_read_only_when_it_is_a_positive_number(headers, expected):
    assert _batch_size(PoolResponse(200, headers, b"{}")) == expected
