"""A pool's process dies, or a crashed run leaves one behind: the stack recovers by itself.

`kill -9` of the pid `tiergate status` reports kills TorchServe's Python wrapper only; its
Java frontend and worker outlive it and keep the pool's ports and pid file. The supervisor
must stop them, start the pool again once (no restart loop) and count the restart; it must
also notice a frontend that died under a wrapper that did not exit; and a later
`tiergate up` must not trip over what a crashed run left.

Killing pools and supervisors would take the session stack from the other tests, so the
scenario runs a stack of its own in a nested network namespace: run as a module, this file
is that scenario and prints its outcome as JSON. Both tests read the one run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from torchserve_backend.processes import alive, group_members

from .conftest import REPO, resnet18_only, stack_config, tiergate
from .images import cat_jpeg
from .stack_processes import stack_processes, tag_this_process

RECOVERY_TIMEOUT_S = 180.0
# After the pool serves again, a restart loop would show within this many more restarts' time.
QUIET_S = 15.0


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> dict:
    isolated = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "isolated"]
    run = subprocess.run(
        [*isolated, sys.executable, "-m", "tests.integration.test_pool_process", str(tmp_path_factory.mktemp("pool"))],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    result = json.loads(run.stdout.splitlines()[-1])
    print(json.dumps(result, indent=1))
    return result


def test_a_killed_pool_process_is_replaced_whole_once_and_counted(outcome):
    killed = outcome["killed"]
    assert killed["old_group"][1:], "the scenario should have killed a wrapper with a frontend under it"
    assert killed["serving_again_after_s"] is not None, "the pool never served again"
    assert killed["old_group_left"] == []  # the orphaned Java frontend and worker are gone too
    # Counted once where an operator looks, and still once after a quiet spell: no loop.
    assert killed["status_restarts"] == 1
    assert killed["metrics_restarts"] == 1.0
    assert killed["restart_lines"] == 1


def test_a_pool_whose_frontend_died_under_a_live_wrapper_is_restarted(outcome):
    frontend = outcome["frontend_died"]
    assert frontend["serving_again_after_s"] is not None, "the pool never served again"
    assert frontend["old_group_left"] == []  # the stopped wrapper too
    assert frontend["status_restarts"] == 1


def test_what_a_crashed_run_left_does_not_block_up(outcome):
    crashed = outcome["crashed"]
    assert crashed["left_by_crash"], "the crash should have left the pools' processes behind"
    assert crashed["up_returncode"] == 0, crashed["up_output"]
    assert torchserve(crashed["still_running_from_crash"]) == []
    assert crashed["premium_served_by"] == "gpu"
    assert torchserve(outcome["left_after_down"]) == []
    # Ray's dashboard and runtime-env agents of the crashed run outlived both once in three
    # runs (not found by the stack's environment marker): printed, not yet asserted.
    print("left after down:", outcome["left_after_down"])


def torchserve(processes: list[str]) -> list[str]:
    """The TorchServe processes ('pid command') among these: what would hold a pool's ports."""
    return [line for line in processes if any(word in line for word in ("torchserve", "java", "model_service_worker"))]


def scenario(state_dir: Path) -> dict:
    tag = tag_this_process()
    try:
        return kill_and_crash(state_dir, tag)
    finally:  # whatever a failing run left must not outlive it
        for line in stack_processes(tag):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def kill_and_crash(state_dir: Path, tag: str) -> dict:
    config = resnet18_only(stack_config())
    config_file = state_dir / "tiergate.yaml"
    config_file.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{config['port']}"

    def up() -> subprocess.CompletedProcess:
        return tiergate("up", "--detach", "--config", str(config_file), "--state-dir", str(state_dir), check=False)

    def status() -> dict:
        return json.loads(tiergate("status", "--json", "--state-dir", str(state_dir), check=False).stdout)

    started = up()
    if started.returncode != 0:
        raise SystemExit(f"tiergate up failed:\n{started.stdout}\n{started.stderr}")

    gpu = pool(status(), "gpu")
    old_group = group_members(gpu["pid"])  # the wrapper leads its group
    os.kill(gpu["pid"], signal.SIGKILL)  # the wrapper only, as `kill -9 PID` does
    serving_again_after_s = wait_served(url, "premium", "gpu")
    time.sleep(QUIET_S)
    metrics = httpx.get(url + "/metrics", trust_env=False, timeout=30.0).text
    killed = {
        "old_group": old_group,
        "serving_again_after_s": serving_again_after_s,
        "old_group_left": [pid for pid in old_group if alive(pid)],
        "status_restarts": pool(status(), "gpu").get("restarts"),
        "metrics_restarts": sample(metrics, 'tiergate_pool_restarts_total{pool="gpu"}'),
        "restart_lines": (state_dir / "supervisor.log").read_text().count("pool gpu exited"),
    }

    # The CPU pool's Java frontend dies while its wrapper, stopped, cannot notice and exit.
    cpu = pool(status(), "cpu")
    cpu_group = group_members(cpu["pid"])
    os.kill(cpu["pid"], signal.SIGSTOP)
    os.kill(next(pid for pid in cpu_group if command(pid).startswith("java")), signal.SIGKILL)
    frontend_died = {"serving_again_after_s": wait_served(url, "standard", "cpu")}
    frontend_died["old_group_left"] = [pid for pid in cpu_group if alive(pid)]
    # The supervisor records the restart once its readiness check has seen the pool's models,
    # which can be a moment after the gateway's first answer from it.
    recorded = time.monotonic() + 30
    while pool(status(), "cpu").get("restarts") != 1 and time.monotonic() < recorded:
        time.sleep(0.5)
    frontend_died["status_restarts"] = pool(status(), "cpu").get("restarts")

    # A crash: the supervisor and a pool's wrapper die at once. Ray goes with the supervisor
    # (it shares its fate); TorchServe's frontends and workers stay, with their pid files.
    now = status()
    os.kill(now["supervisor_pid"], signal.SIGKILL)
    os.kill(pool(now, "cpu")["pid"], signal.SIGKILL)
    time.sleep(3)
    left_by_crash = stack_processes(tag)
    again = up()
    with httpx.Client(base_url=url, trust_env=False, timeout=30.0) as client:
        premium = served_by(client, "premium")
    crashed = {
        "left_by_crash": left_by_crash,
        "up_returncode": again.returncode,
        "up_output": (again.stdout + again.stderr)[-2000:],
        "still_running_from_crash": [line for line in left_by_crash if alive(int(line.split()[0]))],
        "premium_served_by": premium,
    }
    tiergate("down", "--state-dir", str(state_dir), check=False)
    return {"killed": killed, "frontend_died": frontend_died, "crashed": crashed, "left_after_down": stack_processes(tag)}


def pool(status: dict, name: str) -> dict:
    return next(pool for pool in status["pools"] if pool["name"] == name)


def wait_served(url: str, tier: str, pool_name: str) -> float | None:
    """Seconds until the pool answers the tier's real inference again; None if it never does."""
    began = time.monotonic()
    with httpx.Client(base_url=url, trust_env=False, timeout=30.0) as client:
        while time.monotonic() - began < RECOVERY_TIMEOUT_S:
            if served_by(client, tier) == pool_name:
                return round(time.monotonic() - began, 1)
            time.sleep(1)
    return None


def command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def served_by(client: httpx.Client, tier: str) -> str | None:
    """The pool that answered a real inference for the tier, or None if it failed."""
    try:
        response = client.post("/predictions/resnet18", content=cat_jpeg(), headers={"X-SLA-Tier": tier})
    except httpx.TransportError:
        return None
    return response.headers.get("x-tiergate-pool") if response.status_code == 200 else None


def sample(exposition: str, series: str) -> float | None:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


if __name__ == "__main__":
    print(json.dumps(scenario(Path(sys.argv[1]))))
