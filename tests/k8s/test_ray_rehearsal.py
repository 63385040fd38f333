"""Rehearse the RayService on a real Ray cluster: a head and a worker with token auth, and the
rendered serveConfigV2 deployed through the dashboard's REST API, the way KubeRay does it.

Ray binds every address the machine has, so this runs only inside a private network
namespace (`make test` provides one); elsewhere it skips. Light on purpose: one worker with
two CPUs (room for two gateway replicas). The pools are not started, except for the
cluster-scope coalescing rehearsal, which serves a request through a real CPU pool with the
one small model (digits) it needs.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config import LocalLaunch, parse_config
from gateway.k8s_render import render
from torchserve_backend.launcher import PoolProcess, PoolSpec, stop_group

from .conftest import REPO, one

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # --block keeps `ray start` in front, and its own process group holds every Ray process it
    # starts: the teardown stops exactly those, never another test's Ray.
    return subprocess.Popen(
        [RAY, "start", "--block", *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )


def container_environment(built) -> dict[str, str]:
    """The plain settings the rendered Ray containers carry (the token comes from a Secret
    there, and HAProxy ingress stays off here: its files would need a directory per test)."""
    head = one(built["cpu-only"], "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    (container,) = head["template"]["spec"]["containers"]
    settings = {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}
    return {**settings, "RAY_SERVE_ENABLE_HA_PROXY": "0"}


@pytest.fixture
def ray_cluster(built, tmp_path_factory):
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        pytest.skip("starts Ray, which binds every address: run inside a private network namespace (make test)")
    # Ray's unix socket paths must stay short.
    temp_dir = Path(f"/tmp/tg-ray-{secrets.token_hex(3)}")
    logs = tmp_path_factory.mktemp("ray-logs")
    token = secrets.token_hex(32)
    metrics_dir = tmp_path_factory.mktemp("prometheus-multiproc")  # the worker pod's shared volume
    env = {
        **os.environ, **container_environment(built), "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    gcs_port, dashboard_port = _free_port(), _free_port()
    head = _start(
        ["--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=0",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env, logs / "head.log",
    )
    processes = [head]
    try:
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        _wait(lambda: httpx.get(f"{dashboard}/api/gcs_healthz", timeout=2).status_code == 200, 120, logs)
        processes.append(_start(
            [f"--address=127.0.0.1:{gcs_port}", "--node-ip-address=127.0.0.1", "--num-cpus=2"],
            env, logs / "worker.log",
        ))
        yield {"dashboard": dashboard, "token": token, "logs": logs, "temp_dir": temp_dir}
    finally:
        for process in reversed(processes):
            stop_group(process.pid, 20)
            process.wait(10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait(ready, timeout_s: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:]) for p in logs.glob("*.log"))
    raise AssertionError(f"not ready after {timeout_s}s\n{tails}")


def _serve_config(built, tmp_path: Path, ray_service: dict | None = None) -> tuple[dict, int]:
    """The rendered serveConfigV2 (default: the committed one) with local stand-ins for what
    the pod provides: the pool token file and a free HTTP port."""
    ray_service = ray_service or one(built["cpu-only"], "RayService")
    serve_config = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
    token_file = tmp_path / "pool-token"
    token_file.write_text("local-rehearsal-token\n")
    serve_port = _free_port()
    serve_config["http_options"].update(host="127.0.0.1", port=serve_port)
    for deployment in serve_config["applications"][0]["deployments"]:
        user_config = deployment["user_config"]  # the only place the config travels
        for pool in user_config["pools"].values():
            pool["auth_token_file"] = str(token_file)
        parse_config(user_config)
    return serve_config, serve_port


def _deploy(client: httpx.Client, ray_cluster, serve_config: dict, serve_port: int) -> dict:
    """PUT the Serve config as KubeRay does; once the gateway answers, return its deployments by name."""
    url = f"{ray_cluster['dashboard']}/api/serve/applications/"
    assert client.put(url, json=serve_config).status_code == 401, "the dashboard must refuse a call without the token"
    authorized = {"Authorization": f"Bearer {ray_cluster['token']}"}
    response = client.put(url, json=serve_config, headers=authorized)
    assert response.status_code == 200, response.text

    def running() -> bool:
        status = client.get(url, headers=authorized).json()
        application = status.get("applications", {}).get("tiergate")
        if application and application["status"] in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise AssertionError(application)
        return bool(application) and application["status"] == "RUNNING"

    _wait(running, 240, ray_cluster["logs"])
    # RUNNING is the controller's view; each proxy learns the new route a moment later
    # (a long poll), and answers 404 until then, as KubeRay's own health probe would see.
    healthz = f"http://127.0.0.1:{serve_port}/healthz"
    _wait(lambda: client.get(healthz).status_code != 404, 60, ray_cluster["logs"])
    return client.get(url, headers=authorized).json()["applications"]["tiergate"]["deployments"]


def test_rendered_serve_config_deploys_through_the_dashboard_api(built, ray_cluster, tmp_path):
    serve_config, serve_port = _serve_config(built, tmp_path)
    rendered = serve_config["applications"][0]["deployments"][0]
    with httpx.Client(trust_env=False, timeout=30) as client:
        deployment = _deploy(client, ray_cluster, serve_config, serve_port)["tiergate"]
        config = deployment["deployment_config"]
        assert config["autoscaling_config"]["min_replicas"] == rendered["autoscaling_config"]["min_replicas"]
        assert config["user_config"] == rendered["user_config"]
        assert deployment["replicas"] and deployment["replicas"][0]["state"] == "RUNNING"

        health = client.get(f"http://127.0.0.1:{serve_port}/healthz")
        assert health.status_code == 200, health.text
        # The containers' environment names the gateway's ingress callback: a header Ray Serve
        # itself would choke on (a non-UTF-8 request id: a bare 500) never reaches it.
        odd = client.get(f"http://127.0.0.1:{serve_port}/healthz", headers=[(b"x-request-id", b"caf\xe9")])
        assert odd.status_code == 200 and odd.headers.get("x-request-id") != "caf\xe9", odd.text


def test_scaled_out_replicas_share_each_pools_limit(built, ray_cluster, tmp_path):
    """Serve's autoscaler runs more replicas than the config's `replicas`: together they hold
    each pool's max_concurrency (rounded up per replica), not that many each."""
    serve_config, serve_port = _serve_config(built, tmp_path)
    rendered = serve_config["applications"][0]["deployments"][0]
    assert rendered["user_config"]["replicas"] == 1
    rendered["autoscaling_config"].update(min_replicas=2, initial_replicas=2)  # as if scaled out
    limits = {name: pool["max_concurrency"] for name, pool in rendered["user_config"]["pools"].items()}
    with httpx.Client(trust_env=False, timeout=30) as client:
        deployment = _deploy(client, ray_cluster, serve_config, serve_port)["tiergate"]
        assert [replica["state"] for replica in deployment["replicas"]] == ["RUNNING", "RUNNING"]

        def slots() -> dict[str, float]:
            text = client.get(f"http://127.0.0.1:{serve_port}/metrics").text
            found = re.findall(r'^tiergate_pool_slots\{pool="([^"]+)"\} (\S+)$', text, re.MULTILINE)
            return {pool: float(value) for pool, value in found}

        # Both replicas' shares, summed across the pod's replicas (PROMETHEUS_MULTIPROC_DIR).
        shared = {name: 2 * math.ceil(limit / 2) for name, limit in limits.items()}
        _wait(lambda: slots() == shared, 60, ray_cluster["logs"])


@pytest.fixture
def digits_pool(tmp_path_factory):
    """A real TorchServe pool on free loopback ports, loading only the digits MAR."""
    ports = [_free_port() for _ in range(3)]
    launch = LocalLaunch(variant="int8", inference_port=ports[0], management_port=ports[1], metrics_port=ports[2])
    store = (REPO / "artifacts" / "model-store").resolve()
    if not (store / "digits-int8.mar").exists():
        pytest.skip("no digits-int8.mar: run `tiergate build-models` first")
    process = PoolProcess(PoolSpec("rehearsal", ("digits",), store, launch, tmp_path_factory.mktemp("digits-pool")))
    process.start()
    try:
        process.wait_ready(timeout_s=300)
        yield process.spec
    finally:
        process.stop()


def test_cluster_scope_coalescing_deploys_its_coalescer_and_serves_a_request(built, ray_cluster, digits_pool, tmp_path):
    """`coalesce_scope: cluster` renders the coalescer as its own Serve deployment: deployed as
    KubeRay would, a request goes gateway replica -> coalescer replica -> a real pool."""
    data = yaml.safe_load((REPO / "gateway" / "tiergate.yaml").read_text())
    data["coalesce_scope"] = "cluster"
    (ray_service,) = [
        doc for doc in yaml.safe_load_all(render(parse_config(data))["base/ray-service.yaml"]) if doc["kind"] == "RayService"
    ]
    serve_config, serve_port = _serve_config(built, tmp_path, ray_service)
    application = serve_config["applications"][0]
    assert application["args"] == {"coalesce_scope": "cluster"}
    for deployment in application["deployments"]:  # the Services' stand-in: the local pool
        for pool in deployment["user_config"]["pools"].values():
            pool.update(url=digits_pool.inference_url, metrics_url=digits_pool.metrics_url)
    coalescers = application["deployments"][1]["autoscaling_config"]["min_replicas"]
    features = [float(i % 17) for i in range(64)] + [float(i % 5) for i in range(64)]  # two rows
    request = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 64], "data": features}]}
    with httpx.Client(trust_env=False, timeout=60) as client:
        deployments = _deploy(client, ray_cluster, serve_config, serve_port)
        assert set(deployments) == {"tiergate", "tiergate-coalescer"}
        coalescer = deployments["tiergate-coalescer"]
        assert [replica["state"] for replica in coalescer["replicas"]] == ["RUNNING"] * coalescers
        answer = client.post(f"http://127.0.0.1:{serve_port}/v2/models/digits/infer", json=request,
                             headers={"X-SLA-Tier": "standard"})
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["name"] == "probabilities" and output["shape"] == [2, 10]

    # Serve logs each call a replica takes: the request went through a coalescer replica.
    replica_logs = ray_cluster["temp_dir"] / "session_latest" / "logs" / "serve"

    def coalescer_took_it() -> bool:
        return any("coalesce_then_route" in log.read_text(errors="replace")
                   for log in replica_logs.glob("replica_tiergate_tiergate-coalescer_*.log"))

    _wait(coalescer_took_it, 30, ray_cluster["logs"])
