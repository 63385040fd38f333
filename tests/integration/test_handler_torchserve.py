"""A MAR made by model.archive, served by a real TorchServe on loopback ports; the handler's
modules travel in the MAR, and the worker imports them from there."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model.archive import archive_tiergate_mar
from tests.unit.test_handler import PHOTO, png_declaring, write_model_dir
from torchserve_backend import tiergate_backends as backends

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 60


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchserve")
    model_dir = write_model_dir(root / "tiny", variant="int8", max_batch_size=4)
    files = [model_dir / name for name in ("tiny-int8.pt2", "tiny-fp32.pt2", backends.LABELS_FILE, backends.VARIANT_FILE)]
    archive_tiergate_mar("tiny", files[0], files[1:], root / "store" / "tiny-int8.mar")

    inference, management, metrics, grpc = free_ports(4)
    model_config = {
        "tiny": {
            "1.0": {
                "defaultVersion": True,
                "marName": "tiny-int8.mar",
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 4,
                "maxBatchDelay": 500,
                "responseTimeout": 60,
            }
        }
    }
    (root / "config.properties").write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{inference}",
                f"management_address=http://127.0.0.1:{management}",
                f"metrics_address=http://127.0.0.1:{metrics}",
                "grpc_inference_address=127.0.0.1",
                "grpc_management_address=127.0.0.1",
                f"grpc_inference_port={grpc}",
                f"grpc_management_port={grpc + 1}",
                "load_models=tiny=tiny-int8.mar",
                f"models={json.dumps(model_config)}",
                "disable_token_authorization=true",
                "install_py_dep_per_model=false",
            ]
        )
    )
    for folder in ("tmp", "logs"):
        (root / folder).mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(root / "tmp"),
        "LOG_LOCATION": str(root / "logs"),
        "METRICS_LOCATION": str(root / "logs"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with open(root / "stdout.log", "wb") as stdout:
        process = subprocess.Popen(
            [str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
             "--model-store", str(root / "store"), "--ts-config", str(root / "config.properties")],
            cwd=root, env=env, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{inference}/predictions/tiny"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.poll() is None, (root / "stdout.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "TorchServe did not get ready"
            try:
                if httpx.get(f"http://127.0.0.1:{inference}/ping", timeout=2).json()["status"] == "Healthy":
                    if httpx.post(url, content=png_declaring(1, 1), timeout=10).status_code != 404:
                        break
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.3)
        yield url, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_real_torchserve_answers_a_mixed_batch_per_request(torchserve):
    url, root = torchserve
    photo = PHOTO.read_bytes()
    bodies = [photo, b"not an image", png_declaring(50_000, 50_000), photo]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda body: httpx.post(url, content=body, timeout=30), bodies))

    assert [reply.status_code for reply in replies] == [200, 400, 400, 200]
    assert all(reply.headers["X-Tiergate-Backend"] == "cpu-int8" for reply in replies)
    assert len(replies[0].json()) == 5 and replies[0].json() == replies[3].json()
    assert replies[1].json()["type"] == "InvalidInput" and "limit" in replies[2].json()["message"]
    model_log = (root / "logs" / "model_log.log").read_text()
    assert "backend=cpu-int8" in model_log
