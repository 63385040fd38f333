"""Shadow tests on the real stack: a candidate TorchServe pool, started and stopped at run time.

The candidate is a third pool serving the fp32 MAR, started here with the same launcher
`tiergate up` uses; the shadow tests are switched on by a config reload of the running
(session) stack, which is itself part of what is tested: starting, changing and
stopping a shadow test is a reload, never a restart.

- `same-build`: premium traffic (the gpu pool, which runs the same fp32 program on a
  host without CUDA) mirrored to the candidate: the answers must be identical.
- `int8-vs-fp32`: standard traffic (the int8 pool) mirrored to the fp32 candidate:
  quantization changes every probability a little and some top-1 classes.
"""

from __future__ import annotations

import base64
import copy
import functools
import io
import os
import signal
import sqlite3
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from gateway.config import LocalLaunch
from model.photos import bundled_photo_paths, load_photo
from torchserve_backend.launcher import PoolProcess, PoolSpec

from .conftest import ARTIFACTS, tiergate
from .images import cat_jpeg
from .waiting import wait_for

PREDICT = "/predictions/resnet18"
CANDIDATE = LocalLaunch(variant="fp32", inference_port=8100, management_port=8101, metrics_port=8102)


@functools.cache
def photos() -> tuple[bytes, ...]:
    """Every bundled photo as a JPEG, the way a client sends it."""
    encoded = []
    for path in bundled_photo_paths():
        buffer = io.BytesIO()
        load_photo(path).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return tuple(encoded)


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same image with a JPEG comment segment (COM) right after the start marker."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


@dataclass
class Shadowed:
    stack: object
    candidate: PoolProcess
    config: dict
    log_path: Path

    def send(self, body: bytes, tier: str, request_id: str):
        with self.stack.client() as client:
            return client.post(PREDICT, content=body, headers={"X-SLA-Tier": tier, "X-Request-ID": request_id})

    def rows(self, request_ids: list[str], timeout_s: float = 60) -> list[dict]:
        """The log rows of these requests, once all are written (the writer is asynchronous)."""

        def written():
            with sqlite3.connect(f"file:{self.log_path}?mode=ro", uri=True) as connection:
                connection.row_factory = sqlite3.Row
                marks = ",".join("?" * len(request_ids))
                found = [dict(row) for row in connection.execute(
                    f"SELECT * FROM shadow_samples WHERE request_id IN ({marks}) ORDER BY id", request_ids
                )]
            return found if len(found) >= len(request_ids) else None

        return wait_for(lambda: self.log_path.exists() and written(), timeout_s, 0.2)


def shadow_config(base: dict, log_path: Path, token_file: Path) -> dict:
    config = copy.deepcopy(base)
    config["pools"]["candidate"] = {
        "url": f"http://127.0.0.1:{CANDIDATE.inference_port}", "max_concurrency": 4, "models": ["resnet18"],
        "auth_token_file": str(token_file),  # the candidate's TorchServe keeps its token auth on
    }
    config["shadow_log"] = str(log_path)
    common = {"model": "resnet18", "sample_rate": 1.0, "target_pool": "candidate", "max_concurrency": 16,
              "timeout_ms": 30_000}
    config["shadows"] = [
        {"name": "same-build", "tiers": ["premium"], **common},
        {"name": "int8-vs-fp32", "tiers": ["standard"], **common},
    ]
    return config


@pytest.fixture(scope="module")
def shadowed(stack):
    candidate = PoolProcess(PoolSpec(
        name="candidate", models=("resnet18",), model_store=(ARTIFACTS / "model-store").resolve(),
        launch=CANDIDATE, workdir=stack.state_dir / "pools" / "candidate",
    ))
    candidate.start()
    try:
        assert candidate.wait_ready() == "cpu-fp32"
        log_path = stack.state_dir / "shadow.sqlite"
        config = shadow_config(stack.config, log_path, candidate.spec.inference_token_file)
        stack.apply(config)  # the shadow tests start: a config reload
        yield Shadowed(stack, candidate, config, log_path)
    finally:
        stack.apply(stack.config)
        candidate.stop()


def test_the_same_build_agrees_on_every_photo(shadowed):
    ids = [f"same-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(photos()))]
    for request_id, photo in zip(ids, photos()):
        response = shadowed.send(photo, "premium", request_id)
        assert response.status_code == 200 and response.headers["x-tiergate-pool"] == "gpu"
    rows = shadowed.rows(ids)
    assert {row["shadow"] for row in rows} == {"same-build"}
    assert [row["outcome"] for row in rows] == ["agree"] * len(ids)
    assert all(row["top1_same"] == 1 and row["overlap"] == 1.0 for row in rows)
    assert max(row["max_delta"] for row in rows) < 1e-5
    assert all(row["detail"] is None for row in rows)
    assert shadowed.stack.metric("tiergate_shadow_top1_total", shadow="same-build", result="different") == 0


def test_int8_against_fp32_differences_are_measured_and_logged(shadowed):
    before = shadowed.stack.metric("tiergate_shadow_outcomes_total", shadow="int8-vs-fp32", outcome="disagree")
    ids = [f"int8-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(photos()))]
    for request_id, photo in zip(ids, photos()):
        response = shadowed.send(photo, "standard", request_id)
        assert response.status_code == 200 and response.headers["x-tiergate-backend"] == "cpu-int8"
    rows = shadowed.rows(ids)
    assert {row["shadow"] for row in rows} == {"int8-vs-fp32"}
    # What differs, honestly: quantization moves every probability, so no sample is exact...
    assert all(row["max_delta"] > 0 for row in rows)
    assert min(row["overlap"] for row in rows) < 1.0
    # ...and some top-1 classes change; those are the logged disagreements, with both answers.
    disagreements = [row for row in rows if row["outcome"] == "disagree"]
    assert [row for row in rows if not row["top1_same"]], "expected int8 to change some top-1 class"
    assert {row["request_id"] for row in rows if not row["top1_same"]} <= {row["request_id"] for row in disagreements}
    for row in disagreements:
        detail = orjson.loads(row["detail"])
        assert len(detail["primary"]) == len(detail["candidate"]) == 5
        assert max(detail["delta"].values()) == pytest.approx(row["max_delta"])
    after = shadowed.stack.metric("tiergate_shadow_outcomes_total", shadow="int8-vs-fp32", outcome="disagree")
    assert after - before == len(disagreements)


def test_open_inference_batches_are_compared_image_by_image(shadowed):
    images = photos()[:3]
    request = {"inputs": [{
        "name": "images", "datatype": "BYTES", "shape": [len(images)],
        "data": [base64.b64encode(image).decode() for image in images],
    }]}
    ids = {tier: f"v2-{tier}-{uuid.uuid4().hex[:8]}" for tier in ("premium", "standard")}
    with shadowed.stack.client() as client:
        for tier, request_id in ids.items():
            response = client.post("/v2/models/resnet18/infer", json=request,
                                   headers={"X-SLA-Tier": tier, "X-Request-ID": request_id})
            assert response.status_code == 200, response.text
    same, quantized = shadowed.rows([ids["premium"], ids["standard"]])
    assert (same["shadow"], same["outcome"], same["top1_same"]) == ("same-build", "agree", 1)
    assert same["max_delta"] < 1e-5
    assert quantized["shadow"] == "int8-vs-fp32" and quantized["outcome"] in {"agree", "disagree"}
    assert quantized["max_delta"] > 0  # int8 moved some probability of some image
    if quantized["detail"] is not None:  # a batch's disagreement logs every image's answers
        detail = orjson.loads(quantized["detail"])
        assert len(detail["primary"]) == len(detail["candidate"]) == len(images)


def test_payloads_stay_out_of_every_log_by_default(shadowed):
    marker = b"TIERGATE-MARKER-" + uuid.uuid4().hex.encode()
    ids = [f"marker-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(photos()))]
    for request_id, photo in zip(ids, photos()):
        assert shadowed.send(with_comment(photo, marker), "standard", request_id).status_code == 200
    rows = shadowed.rows(ids)
    assert any(row["outcome"] == "disagree" for row in rows)  # rows that would carry a payload
    assert all(row["payload"] is None for row in rows)
    time.sleep(1.0)  # let the pools and the supervisor flush their own logs
    for path in shadowed.stack.state_dir.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), f"request payload found in {path}"


def test_report_reads_the_live_log(shadowed):
    config_file = shadowed.stack.state_dir / "tiergate.yaml"  # the config the stack runs now
    result = tiergate("shadow", "report", "--config", str(config_file))
    table, plot_line = result.stdout.strip().split("\n\n")
    lines = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert set(lines) == {"same-build", "int8-vs-fp32"}
    assert lines["same-build"][3] == "100.0%"
    png = Path(plot_line.removeprefix("plot: "))
    assert png.read_bytes().startswith(b"\x89PNG")


def test_stopping_a_shadow_test_is_a_config_reload(shadowed):
    without = copy.deepcopy(shadowed.config)
    without["shadows"] = [test for test in without["shadows"] if test["name"] != "same-build"]
    before = shadowed.stack.metric("tiergate_shadow_mirrored_total", shadow="same-build")
    shadowed.stack.apply(without)
    try:
        for i in range(3):
            assert shadowed.send(cat_jpeg(), "premium", f"stopped-{i}").status_code == 200
        assert shadowed.stack.metric("tiergate_shadow_mirrored_total", shadow="same-build") == before
    finally:
        shadowed.stack.apply(shadowed.config)
    assert shadowed.send(cat_jpeg(), "premium", f"restarted-{uuid.uuid4().hex[:8]}").status_code == 200
    assert shadowed.stack.metric("tiergate_shadow_mirrored_total", shadow="same-build") == before + 1


def test_a_killed_target_leaves_the_primary_alone_and_counts_errors(shadowed):
    def premium(label: str) -> tuple[list[float], list[str]]:
        seconds, ids = [], [f"{label}-{uuid.uuid4().hex[:8]}-{i}" for i in range(8)]
        for request_id in ids:
            started = time.perf_counter()
            response = shadowed.send(cat_jpeg(), "premium", request_id)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
        return seconds, ids

    def failures() -> tuple[float, float]:
        """(shadow calls that failed, samples dropped because the target is down)"""
        return (
            shadowed.stack.metric("tiergate_shadow_errors_total", shadow="same-build", call="candidate"),
            shadowed.stack.metric("tiergate_shadow_dropped_total", shadow="same-build", reason="target_down"),
        )

    healthy, ids = premium("healthy")
    shadowed.rows(ids)  # every shadow call of these has ended
    errors_before, down_before = failures()
    os.killpg(shadowed.candidate.pid, signal.SIGKILL)
    wait_for(lambda: not shadowed.candidate.running, 10, 0.1)
    dead, ids = premium("dead")
    assert statistics.median(dead) < statistics.median(healthy) * 1.5 + 0.025

    def settled():
        errors, down = failures()
        new = (errors - errors_before, down - down_before)
        return new if sum(new) == len(ids) else None

    # The candidate pool's breaker opens after 5 failures: later samples are dropped without a connection attempt.
    errors, down = wait_for(settled, 10)
    assert errors >= 5 and down >= 1
    assert [(row["outcome"], row["error"]) for row in shadowed.rows(ids[:5])] == [("error", "unreachable")] * 5
