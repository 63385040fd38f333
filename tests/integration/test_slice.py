"""The vertical slice end to end: client → Ray Serve gateway → real TorchServe pools."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .images import cat_jpeg, solid_png

PREDICT = "/predictions/resnet18"


def test_up_reports_where_everything_runs(stack):
    status = stack.status()
    assert status["state"] == "ready"
    assert status["gateway_url"] == stack.url
    pools = {pool["name"]: pool for pool in status["pools"]}
    assert set(pools) == {"gpu", "cpu"}
    for pool in pools.values():
        assert pool["state"] == "ready" and pool["pid"] > 0
        assert re.match(r"^http://127\.0\.0\.1:\d+$", pool["inference_url"])
        assert pool["metrics_url"].endswith("/metrics")
    assert pools["cpu"]["backend"] == "cpu-int8"
    # No GPU here: the GPU pool must say what really runs, never TensorRT.
    assert pools["gpu"]["backend"] == "cpu-fp32"


def test_pool_frontends_run_with_a_capped_heap(stack):
    """TorchServe's JVM gets the pool's heap cap, not the default quarter of the machine."""
    for pool in stack.status()["pools"]:
        java = [
            cmdline for cmdline in group_command_lines(pool["pid"])
            if cmdline and Path(cmdline[0]).name == "java"
        ]
        assert len(java) == 1 and "-Xmx512m" in java[0], java


def group_command_lines(group: int) -> list[list[str]]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == group:
                found.append((entry / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        except (OSError, ProcessLookupError):
            continue
    return found


@pytest.mark.parametrize(
    "tier, pool, backend",
    [("premium", "gpu", "cpu-fp32"), ("standard", "cpu", "cpu-int8"), ("batch", "cpu", "cpu-int8"), (None, "cpu", "cpu-int8")],
)
def test_tier_header_routes_to_the_configured_pool(stack, tier, pool, backend):
    headers = {"X-SLA-Tier": tier} if tier else {}
    with stack.client() as client:
        response = client.post(PREDICT, content=cat_jpeg(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-tiergate-tier"] == (tier or "standard")
    assert response.headers["x-tiergate-pool"] == pool
    assert response.headers["x-tiergate-backend"] == backend
    top5 = response.json()
    assert len(top5) == 5
    probabilities = list(top5.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) <= 1.0 + 1e-6


def test_both_pools_agree_on_a_real_photo(stack):
    """int8 on the CPU pool and fp32 on the GPU pool serve the same model."""
    with stack.client() as client:
        gpu = client.post(PREDICT, content=cat_jpeg(), headers={"X-SLA-Tier": "premium"}).json()
        cpu = client.post(PREDICT, content=cat_jpeg(), headers={"X-SLA-Tier": "standard"}).json()
    assert next(iter(gpu)) == next(iter(cpu))


def test_versioned_path_and_png(stack):
    with stack.client() as client:
        response = client.post(PREDICT + "/1.0", content=solid_png((200, 30, 30)), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert len(response.json()) == 5


@pytest.mark.parametrize(
    "path, body, headers, status",
    [
        (PREDICT, b"", {}, 400),
        (PREDICT, b"this is not an image", {}, 400),
        (PREDICT, b"\xff\xd8\xff\xe0 truncated jpeg", {}, 400),
        (PREDICT, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, {}, 400),
        (PREDICT, cat_jpeg(), {"Content-Type": "application/json"}, 415),
        (PREDICT, cat_jpeg(), {"X-SLA-Tier": "platinum"}, 400),
        ("/predictions/nosuchmodel", cat_jpeg(), {}, 404),
        ("/models", b"", {}, 404),
    ],
)
def test_bad_input_gets_a_json_4xx(stack, path, body, headers, status):
    with stack.client() as client:
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["message"]
        # ...and both pools keep serving.
        for tier in ("premium", "standard"):
            assert client.post(PREDICT, content=cat_jpeg(), headers={"X-SLA-Tier": tier}).status_code == 200


def test_unknown_tier_error_names_the_valid_tiers(stack):
    with stack.client() as client:
        response = client.post(PREDICT, content=cat_jpeg(), headers={"X-SLA-Tier": "gold"})
    assert response.status_code == 400
    assert "batch, premium, standard" in response.json()["message"]


def test_fifty_megabyte_body_is_refused_before_it_is_read(stack):
    body = b"\xff\xd8\xff" + b"\0" * (50 * 1024 * 1024)
    with stack.client() as client:
        response = client.post(PREDICT, content=body)
        assert response.status_code == 413
        assert response.json()["type"] == "PayloadTooLarge"
        assert client.post(PREDICT, content=cat_jpeg()).status_code == 200


def test_health_and_readiness(stack):
    with stack.client() as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["pools"] == ["cpu", "gpu"]


def test_metrics_count_the_requests_made(stack):
    def served(text: str, tier: str, pool: str) -> float:
        pattern = rf'^tiergate_requests_total\{{[^}}]*code="200"[^}}]*pool="{pool}"[^}}]*tier="{tier}"[^}}]*\}} (\S+)$'
        return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))

    with stack.client() as client:
        before = client.get("/metrics").text
        for _ in range(3):
            client.post(PREDICT, content=cat_jpeg(), headers={"X-SLA-Tier": "batch"})
        client.post(PREDICT, content=cat_jpeg(), headers={"X-SLA-Tier": "premium"})
        after = client.get("/metrics").text
    assert served(after, "batch", "cpu") - served(before, "batch", "cpu") == 3
    assert served(after, "premium", "gpu") - served(before, "premium", "gpu") == 1
    assert 'tiergate_request_duration_seconds_bucket{' in after
