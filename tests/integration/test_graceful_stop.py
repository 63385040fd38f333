"""`tiergate down` under load: the gateway stops admitting, finishes what it accepted, exits.

Every request either completes with 200 or is refused before it is accepted (connection
refused): never a 5xx, and never a reset after acceptance. And the gateway's own access
log agrees: every request it answered reached its client. It all takes seconds, and no
process of the stack is left: TorchServe's, Ray's or HAProxy.

Stopping a stack would take the session stack from the other tests, so the scenario starts
a stack of its own in a nested network namespace: run as a module, this file is that
scenario and prints its outcome as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import yaml

from gateway.stack import drain_haproxy, haproxy_pids

from .conftest import REPO, stack_config, tiergate
from .images import distinct_pngs
from .stack_processes import stack_processes, tag_this_process

PREDICT = "/predictions/resnet18"
TIERS = ("premium", "standard", "batch")
# Draining takes as long as the longest request in flight (well under 1 s here), Ray and the
# pools ~5 s more; this leaves room for a busy machine.
DOWN_BOUND_S = 15.0


# A stand-in HAProxy: named haproxy, finishing its work for a second after SIGUSR1.
STAND_IN = "import signal, sys, time\nsignal.signal(signal.SIGUSR1, lambda *_: (time.sleep(1), sys.exit(0)))\n" \
    "print('ready', flush=True)\nwhile True: time.sleep(0.1)"


def test_drain_soft_stops_every_haproxy_of_the_stack_and_waits_for_them(tmp_path):
    ours, theirs = tmp_path / "tiergate-ours", tmp_path / "tiergate-theirs"
    started = [
        subprocess.Popen(
            ["haproxy", "-c", STAND_IN, "-f", str(directory / "node" / "haproxy.cfg")],
            executable=sys.executable, stdout=subprocess.PIPE, text=True,
        )
        for directory in (ours, ours, theirs)
    ]
    try:
        assert [process.stdout.readline() for process in started] == ["ready\n"] * 3
        assert len(haproxy_pids(ours)) == 2
        began = time.monotonic()
        drain_haproxy(ours, timeout_s=10)
        drained_after = time.monotonic() - began
        assert [process.poll() for process in started[:2]] == [0, 0]
        assert started[2].poll() is None  # another stack's HAProxy is left alone
        assert 0.9 < drained_after < 5
    finally:
        for process in started:
            process.kill()
            process.communicate()


def test_down_under_load_loses_no_accepted_request(tmp_path):
    isolated = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "isolated"]
    run = subprocess.run(
        [*isolated, sys.executable, "-m", "tests.integration.test_graceful_stop", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    outcome = json.loads(run.stdout.splitlines()[-1])
    kinds = Counter(kind for _, _, kind in outcome["requests"])
    during_stop = Counter(kind for _, at, kind in outcome["requests"] if at >= outcome["down_began"])
    print(f"all requests {dict(kinds)}; sent while stopping {dict(during_stop)}; down took {outcome['down_s']} s")

    assert set(kinds) <= {"200", "refused"}, kinds
    assert during_stop["200"] and during_stop["refused"]  # it drained under load, then refused
    assert outcome["down_returncode"] == 0 and outcome["down_s"] < DOWN_BOUND_S
    assert outcome["left_running"] == []
    received = {request_id for request_id, _, kind in outcome["requests"] if kind == "200"}
    answered = outcome["answered_by_gateway"]
    assert answered, "no access log lines found for the load"
    assert set(answered) <= received, "the gateway answered requests whose answers never arrived"


def scenario(state_dir: Path) -> dict:
    tag = tag_this_process()
    config = stack_config(coalesce=False)
    config_file = state_dir / "tiergate.yaml"
    config_file.write_text(yaml.safe_dump(config))
    up = tiergate("up", "--detach", "--config", str(config_file), "--state-dir", str(state_dir), check=False)
    if up.returncode != 0:
        raise SystemExit(f"tiergate up failed:\n{up.stdout}\n{up.stderr}")
    supervisor = json.loads(tiergate("status", "--json", "--state-dir", str(state_dir)).stdout)["supervisor_pid"]

    url = f"http://127.0.0.1:{config['port']}{PREDICT}"
    requests: list[tuple[str, float, str]] = []  # (request id, sent at, outcome)
    stop = threading.Event()

    def client(index: int) -> None:
        bodies = distinct_pngs(16, seed=index)
        with httpx.Client(trust_env=False, timeout=60.0) as http:  # keep-alive, like real clients
            for sent in range(10**9):
                if stop.is_set():
                    return
                request_id, at = f"stop-{index}-{sent}", time.monotonic()
                try:
                    response = http.post(
                        url, content=bodies[sent % len(bodies)],
                        headers={"X-SLA-Tier": TIERS[index % len(TIERS)], "X-Request-ID": request_id},
                    )
                    kind = str(response.status_code)
                except httpx.ConnectError:
                    kind = "refused"
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                requests.append((request_id, at, kind))
                if kind == "refused":
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(4)
    down_began = time.monotonic()
    down = tiergate("down", "--state-dir", str(state_dir), check=False)
    down_s = time.monotonic() - down_began
    left_running = stack_processes(tag)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(timeout=90)
    return {
        "down_began": down_began,
        "down_s": round(down_s, 1),
        "down_returncode": down.returncode,
        "left_running": left_running,
        "requests": requests,
        "answered_by_gateway": gateway_answers(supervisor, "stop-"),
    }


def gateway_answers(supervisor_pid: int, prefix: str) -> list[str]:
    """Request ids the gateway's access log recorded, from the stack's Ray session logs
    (Ray names a session's directory after the process that started it)."""
    answered = []
    for log in Path("/tmp/ray").glob(f"session_*_{supervisor_pid}/logs/worker-*.err"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"request_id":"{prefix}' in line:
                answered.append(orjson.loads(line)["request_id"])
    return answered


if __name__ == "__main__":
    print(json.dumps(scenario(Path(sys.argv[1]))))
