"""Hostile clients and a hung replica against a real stack (HAProxy, the Ray Serve gateway,
TorchServe), each attack from its own process (bench/slow_clients.py) while a legitimate
premium caller keeps calling on fresh connections.

The scenario runs once, in a network namespace of its own (its own loopback, so the
attackers can come from many 127/8 addresses and the session stack is not disturbed), on
the bundled config with shorter standard and batch deadlines (HAProxy then waits on a
silent replica 10 s: premium's 5 s + the margin) and a longer header_timeout_s (25 s), so
that the slowloris connections stay open for the attack's whole 24 s instead of being cut
and reopened by the thousand (which the one attacking process, on a shared 2-core machine,
cannot always keep up with). Ray's token auth is disabled in the
caller's environment, as a user may have it: the stack must turn it on regardless.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from gateway.run_settings import REPLICA_TIMEOUT_MARGIN_S

from .conftest import REPO, stack_config, tiergate
from .images import cat_jpeg
from .stack_processes import stack_processes, tag_this_process

PREMIUM = {"X-SLA-Tier": "premium", "Content-Type": "image/jpeg"}
PREDICT = "/predictions/resnet18"
PER_SOURCE = 256  # the bundled max_connections_per_source
HEADER_TIMEOUT_S = 25
SERVER_TIMEOUT_S = 5 + REPLICA_TIMEOUT_MARGIN_S


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> dict:
    state_dir = tmp_path_factory.mktemp("slow-clients")
    isolated = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "isolated"]
    run = subprocess.run(
        [*isolated, sys.executable, "-m", "tests.integration.test_slow_clients", str(state_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=1200, check=False,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    result = json.loads(run.stdout.splitlines()[-1])
    print(json.dumps({key: value for key, value in result.items() if key != "listening"}))  # with -s
    return result


def test_a_trickled_upload_gets_408_within_its_bound_not_when_the_client_stops(outcome):
    # Past HAProxy's buffer the body reaches the replica; the minimum upload rate cuts it off
    # there after the grace period (today: held as long as the client trickles).
    upload = outcome["trickled_upload"]
    assert upload["status"] == 408 and upload["type"] == "RequestTimeout", upload
    assert upload["seconds"] < 5  # premium's deadline bounds it in any case


def test_a_slow_head_or_small_body_is_cut_off_by_haproxy_with_a_408(outcome):
    head, body = outcome["slow_head"], outcome["unfinished_small_body"]
    for cut in (head, body):
        assert cut["status"] == 408, cut
        assert HEADER_TIMEOUT_S - 1 <= cut["seconds"] < HEADER_TIMEOUT_S + 5, cut
    # Once the head is parsed the answer is the gateway's JSON form; for a head that never
    # completes HAProxy's connection layer answers with its built-in page, not errorfiles.
    assert body["type"] == "RequestTimeout", body


def test_premium_is_served_while_300_slow_uploads_are_open(outcome):
    attack, probes = outcome["slow_uploads"]["attack"], outcome["slow_uploads"]["probes"]
    assert attack["open_mean"] >= 250, attack  # the attack held its connections
    assert probes and all(status == 200 for status, _ in probes), probes


def test_premium_is_served_while_4200_slowloris_connections_are_open(outcome):
    attack, probes = outcome["slowloris"]["attack"], outcome["slowloris"]["probes"]
    assert attack["open_mean"] >= 4000, attack
    assert probes and all(status == 200 for status, _ in probes), probes


def test_one_source_cannot_hold_more_than_its_share_of_connections(outcome):
    flood = outcome["one_source_flood"]
    assert flood["cut_at_once"] >= flood["opened"] - PER_SOURCE - 8, flood  # HAProxy refused the rest
    assert flood["cut_at_once"] <= flood["opened"] - PER_SOURCE + 8, flood  # and only the rest
    assert flood["premium_after"] == 200


def test_a_hung_replica_answers_504_json_within_the_server_timeout_and_service_resumes(outcome):
    hung = outcome["hung_replica"]
    assert hung["status"] == 504 and hung["type"] == "ReplicaTimeout", hung
    assert SERVER_TIMEOUT_S - 1 <= hung["seconds"] <= SERVER_TIMEOUT_S + 5
    assert hung["resumed_after_s"] is not None and hung["resumed_after_s"] < 30, hung


def test_haproxys_stats_and_metrics_listen_on_loopback_only(outcome):
    haproxy = {port: hosts for port, hosts in outcome["listening"].items() if port in ("8404", "9101")}
    assert haproxy == {"8404": ["127.0.0.1"], "9101": ["127.0.0.1"]}


def test_nothing_but_the_replicas_grpc_server_listens_beyond_loopback(outcome):
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    beyond = {port for port, hosts in outcome["listening"].items() if set(hosts) - loopback}
    assert beyond == set(outcome["replica_grpc"]), outcome["listeners"]


def test_the_replicas_grpc_server_on_every_interface_refuses_a_call_without_rays_token(outcome):
    calls = outcome["replica_grpc"]
    assert calls, "the replica listens on no wildcard address: then nothing to prove here"
    # Each wildcard port of the replica: Ray's interceptor refuses (or the port is no gRPC at all).
    assert "UNAUTHENTICATED" in calls.values(), calls
    assert set(calls.values()) <= {"UNAUTHENTICATED", "UNAVAILABLE"}, calls


# --- the scenario, in its own network namespace ------------------------------------------------

def scenario(state_dir: Path) -> dict:
    tag = tag_this_process()
    config = stack_config(coalesce=False)
    config["tiers"]["standard"]["deadline_ms"] = 3000
    config["tiers"]["batch"]["deadline_ms"] = 4000
    config["header_timeout_s"] = HEADER_TIMEOUT_S
    config_file = state_dir / "tiergate.yaml"
    config_file.write_text(yaml.safe_dump(config))
    up = tiergate("up", "--detach", "--config", str(config_file), "--state-dir", str(state_dir), check=False)
    if up.returncode != 0:
        raise SystemExit(f"tiergate up failed:\n{up.stdout}\n{up.stderr}")
    url = f"http://127.0.0.1:{config['port']}"
    try:
        replica = replica_pid(tag)
        listening = listening_ports()
        result = {
            "listening": {port: sorted({host for host, _, _ in owners}) for port, owners in listening.items()},
            "listeners": sorted({f"{host}:{port} {name}" for port, owners in listening.items() for host, _, name in owners}),
            "replica_grpc": unauthenticated_grpc_calls(replica, listening),
            "trickled_upload": trickled_upload(url),
            **cut_by_haproxy(url),
            "slow_uploads": under_attack(url, "slow-upload", connections=300, sources=3, every_s=2),
            "slowloris": under_attack(url, "slowloris", connections=4200, sources=21, every_s=5),
            "one_source_flood": one_source_flood(url, PER_SOURCE + 100),
            "hung_replica": hung_replica(url, replica),
        }
    finally:
        tiergate("down", "--state-dir", str(state_dir), check=False)
    result["left_running"] = stack_processes(tag)
    return result


def premium(url: str, timeout: float = 30.0) -> tuple[int, float, dict]:
    """One premium call on a fresh connection: (status or 0 for no answer, seconds, JSON body)."""
    started = time.monotonic()
    try:
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            response = client.post(url + PREDICT, content=CAT, headers=PREMIUM)
    except httpx.HTTPError:
        return 0, time.monotonic() - started, {}
    try:
        body = response.json()
    except ValueError:
        body = {"text": response.text[:200]}
    return response.status_code, time.monotonic() - started, body


def raw_request(url: str, head: bytes, body: bytes, trickle: bytes | None, limit_s: float) -> dict:
    """Send a head and the start of a body, then `trickle` every 0.5 s; the server's answer."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        sock.settimeout(0.5)
        received = b""
        while time.monotonic() - started < limit_s and not answered(received):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if trickle:
                    with contextlib.suppress(OSError):
                        sock.sendall(trickle)
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    seconds = time.monotonic() - started
    if not received:
        return {"status": 0, "seconds": seconds}
    status = int(received.split(b" ", 2)[1])
    try:
        kind = json.loads(received.split(b"\r\n\r\n", 1)[1]).get("type")
    except ValueError:
        kind = None
    return {"status": status, "type": kind, "seconds": round(seconds, 2)}


def answered(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    return bool(length) and len(body) >= int(length.group(1))


def trickled_upload(url: str) -> dict:
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nX-SLA-Tier: premium\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: 4000000\r\n\r\n").encode()
    return raw_request(url, head, b"\xff" * 20_000, b"\xff" * 8, limit_s=40)


def cut_by_haproxy(url: str) -> dict:
    """A head trickled a line every 0.5 s, and a small body that never completes, side by side."""
    start = f"POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nX-SLA-Tier: premium\r\nContent-Type: image/jpeg\r\n".encode()
    with ThreadPoolExecutor(2) as pool:
        head = pool.submit(raw_request, url, start, b"", b"X-a: b\r\n", 60)
        body = pool.submit(raw_request, url, start + b"Content-Length: 2000\r\n\r\n", b"\xff" * 100, None, 60)
        return {"slow_head": head.result(), "unfinished_small_body": body.result()}


def under_attack(url: str, kind: str, connections: int, sources: int, every_s: float, seconds: float = 24.0) -> dict:
    """Premium probes (fresh connections, one every 0.5 s) while an attack runs."""
    attack = subprocess.Popen(
        [sys.executable, "-m", "bench.slow_clients", kind, "--url", url, "--connections", str(connections),
         "--sources", str(sources), "--every", str(every_s), "--seconds", str(seconds)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    time.sleep(10)  # the attack's connections are open
    probes = []
    while attack.poll() is None and len(probes) < 30:
        status, latency, _ = premium(url, timeout=15)
        probes.append((status, round(latency, 3)))
        time.sleep(0.5)
    out, _ = attack.communicate(timeout=seconds + 60)
    return {"attack": json.loads(out.splitlines()[-1]), "probes": probes}


def one_source_flood(url: str, count: int) -> dict:
    """`count` idle connections from one address: how many HAProxy cut at once."""
    host, port = url.removeprefix("http://").split(":")
    sockets, cut = [], 0
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.200", 0))
        try:
            sock.connect((host, int(port)))
        except OSError:  # reset so fast that connect() saw it
            cut += 1
            sock.close()
            continue
        sockets.append(sock)
    time.sleep(2.0)
    for sock in sockets:
        sock.settimeout(0.01)
        try:
            cut += sock.recv(1) == b""
        except TimeoutError:
            pass  # open and waiting for its request, as it should
        except OSError:
            cut += 1
    status, _, _ = premium(url)
    for sock in sockets:
        sock.close()
    return {"opened": count, "cut_at_once": cut, "premium_after": status}


def hung_replica(url: str, replica: int) -> dict:
    os.kill(replica, signal.SIGSTOP)
    try:
        status, seconds, body = premium(url, timeout=40)
    finally:
        os.kill(replica, signal.SIGCONT)
    resumed = time.monotonic()
    resumed_after = None
    while time.monotonic() - resumed < 60:
        if premium(url, timeout=10)[0] == 200:
            resumed_after = round(time.monotonic() - resumed, 1)
            break
        time.sleep(0.5)
    return {"status": status, "type": body.get("type"), "seconds": round(seconds, 2), "resumed_after_s": resumed_after}


def replica_pid(tag: str) -> int:
    (line,) = [line for line in stack_processes(tag) if "ServeReplica:tiergate:tiergate" in line]
    return int(line.split()[0])


def listening_ports() -> dict[str, list[tuple[str, int, str]]]:
    """port → (bound address, pid, process name) of every listening TCP socket in this namespace."""
    ports: dict[str, list[tuple[str, int, str]]] = {}
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        host, port = line.split()[3].rsplit(":", 1)
        for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', line):
            ports.setdefault(port, []).append((host.strip("[]").split("%")[0], int(pid), name))
    return ports


def unauthenticated_grpc_calls(replica: int, listening: dict[str, list[tuple[str, int, str]]]) -> dict[str, str]:
    """A call without Ray's token to each port the replica binds on every interface."""
    wildcard = {"*", "0.0.0.0", "::"}
    codes = {}
    for port, owners in listening.items():
        if any(pid == replica and host in wildcard for host, pid, _ in owners):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
                try:
                    call(b"", timeout=5)
                    codes[port] = "OK"
                except grpc.RpcError as exc:
                    codes[port] = exc.code().name
    return codes


CAT = cat_jpeg()

if __name__ == "__main__":
    print(json.dumps(scenario(Path(sys.argv[1]))))
