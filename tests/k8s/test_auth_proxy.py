"""The pool auth proxy, for real: the rendered start script and nginx config in front of a real
TorchServe with token auth on. Everything listens on loopback only, on free ports, so the
test is safe outside a network namespace too."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.k8s_render.common import POOL_TOKEN_DIR, TORCHSERVE_LOOPBACK_PORT
from torchserve_backend.launcher import stop_group

from .conftest import one

pytestmark = pytest.mark.integration

POOL_TOKEN = "0123456789abcdef" * 4
SBIN = "/usr/sbin:/sbin"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")
    if found is None:
        pytest.skip(f"{name} not installed (Debian: nginx, gettext-base, openjdk-17-jre-headless)")
    return found


@pytest.fixture(scope="module")
def pool(built, tmp_path_factory):
    """TorchServe (no models, token auth on) and the auth proxy, as wired in the pod."""
    tmp_path = tmp_path_factory.mktemp("pool")
    for tool in ("nginx", "envsubst", "java"):
        _tool(tool)
    config_map = one(built["cpu-only"], "ConfigMap", "tiergate-pool-cpu")["data"]
    ts_port, proxy_port = _free_port(), _free_port()
    run_dir, store, secrets, work = (tmp_path / d for d in ("run", "store", "secrets", "tmp"))
    for directory in (run_dir, store, secrets, work, work / "logs"):
        directory.mkdir()
    (secrets / "token").write_text(POOL_TOKEN + "\n")

    # The pod's TorchServe config, moved onto free loopback ports and an empty model store.
    properties = []
    for line in config_map["config.properties"].splitlines():
        key = line.split("=", 1)[0]
        if key in ("load_models", "models"):
            continue
        if key == "inference_address":
            line = f"inference_address=http://127.0.0.1:{ts_port}"
        elif key in ("management_address", "metrics_address"):
            line = f"{key}=http://127.0.0.1:{_free_port()}"
        elif key in ("grpc_inference_port", "grpc_management_port"):
            line = f"{key}={_free_port()}"
        elif key == "model_store":
            line = f"model_store={store}"
        properties.append(line)
    (tmp_path / "config.properties").write_text("\n".join(properties) + "\n")

    template = config_map["auth-proxy.conf.template"]
    template = template.replace(f"server 127.0.0.1:{TORCHSERVE_LOOPBACK_PORT};", f"server 127.0.0.1:{ts_port};")
    template = template.replace("/tmp/", f"{work}/").replace("listen 8090;", f"listen 127.0.0.1:{proxy_port};")
    if os.geteuid() == 0:  # nginx workers would otherwise drop to nobody and lose the temp dirs
        template = "user root root;\n" + template
    (tmp_path / "auth-proxy.conf.template").write_text(template)

    def relocate(script: str) -> str:
        return (
            script.replace("/tmp/", f"{work}/")  # first: the paths below may lie under /tmp
            .replace("/run/torchserve/", f"{run_dir}/")
            .replace(f"{POOL_TOKEN_DIR}/", f"{secrets}/")
            .replace("/etc/tiergate/", f"{tmp_path}/")
        )

    scripts = one(built["cpu-only"], "ConfigMap", "tiergate-auth-proxy")["data"]
    (tmp_path / "start.sh").write_text(relocate(scripts["start.sh"]))
    (tmp_path / "key-is-current.sh").write_text(relocate(scripts["key-is-current.sh"]))

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:{SBIN}",
        "TMPDIR": str(work), "LOG_LOCATION": str(work / "logs"), "METRICS_LOCATION": str(work / "logs"),
    }
    torchserve = subprocess.Popen(
        ["torchserve", "--start", "--foreground", "--ncs", "--model-store", str(store),
         "--ts-config", str(tmp_path / "config.properties")],
        cwd=run_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    proxy = subprocess.Popen(
        ["sh", str(tmp_path / "start.sh")], env=env, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "proxy.log", "wb"), start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{proxy_port}"
        deadline = time.monotonic() + 120
        with httpx.Client(trust_env=False, timeout=5) as client:
            while True:
                try:
                    if client.get(f"{base}/ping").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
                assert torchserve.poll() is None and proxy.poll() is None, (tmp_path / "proxy.log").read_text()
                time.sleep(0.5)
        yield {"proxy": base, "torchserve": f"http://127.0.0.1:{ts_port}", "dir": tmp_path, "run": run_dir}
    finally:
        stop_group(proxy.pid, 5)
        stop_group(torchserve.pid, 15)
        proxy.wait(5)
        torchserve.wait(5)


def test_pool_token_is_required_and_torchserve_gets_its_own_key(pool):
    with httpx.Client(trust_env=False, timeout=10) as client:
        # TorchServe itself refuses anything without its key, even /ping.
        assert client.get(f"{pool['torchserve']}/ping").status_code == 400
        assert client.get(f"{pool['proxy']}/ping").status_code == 200

        predict = f"{pool['proxy']}/predictions/resnet18"
        missing = client.post(predict, content=b"x")
        assert missing.status_code == 401 and missing.json()["type"] == "PoolTokenRejected"
        wrong = client.post(predict, content=b"x", headers={"Authorization": "Bearer " + "f" * 64})
        assert wrong.status_code == 401
        # With the pool token the call reaches TorchServe, which accepts the proxy's key:
        # it answers about the model (none is loaded here), not about the token.
        right = client.post(predict, content=b"x", headers={"Authorization": f"Bearer {POOL_TOKEN}"})
        assert right.status_code == 404 and right.json()["type"] == "ModelNotFoundException"

        assert client.get(f"{pool['proxy']}/models", headers={"Authorization": f"Bearer {POOL_TOKEN}"}).status_code == 404


# Last: it changes the key file under the running proxy.
def test_liveness_check_notices_a_new_torchserve_key(pool):
    check = ["sh", str(pool["dir"] / "key-is-current.sh")]
    assert subprocess.run(check).returncode == 0
    key_file = pool["run"] / "key_file.json"
    current = key_file.read_text()
    key_file.write_text(current.replace('"inference": {\n    "key": "', '"inference": {\n    "key": "new'))
    assert key_file.read_text() != current
    assert subprocess.run(check).returncode == 1
