"""The real local stack (TorchServe pools + Ray Serve gateway) for integration tests.

Ray binds every address the machine has, so these tests only run inside a private
network namespace where loopback is the only interface (`make test` provides one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import default_config

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"


def only_loopback() -> bool:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return {line.split(":")[0].strip() for line in lines} == {"lo"}


def pytest_collection_modifyitems(config, items):
    if only_loopback():
        return
    skip = pytest.mark.skip(reason="starts Ray: run inside a private network namespace (`make test`)")
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


@dataclass
class Stack:
    url: str
    state_dir: Path
    config: dict
    ready_after_s: float

    def tiergate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return tiergate(*args, "--state-dir", str(self.state_dir), check=check)

    def status(self) -> dict:
        return json.loads(self.tiergate("status", "--json", check=False).stdout)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, trust_env=False, timeout=60.0, **kwargs)

    def apply(self, config: dict) -> None:
        """Rewrite the running stack's config file and reload it (Ray Serve reconfigure)."""
        (self.state_dir / "tiergate.yaml").write_text(yaml.safe_dump(config))
        self.tiergate("reload")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the gateway's series `name` (e.g. tiergate_requests_total) with these labels."""
        with self.client() as client:
            text = client.get("/metrics").text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
        )

    def pool_metric(self, pool: str, name: str) -> float:
        """Sum of a TorchServe metric (e.g. ts_inference_requests_total) at one pool."""
        url = next(p["metrics_url"] for p in self.status()["pools"] if p["name"] == pool)
        text = httpx.get(url, trust_env=False, timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )


def pool_key(pool: dict, kind: str) -> dict[str, str]:
    """The header that calls a local pool's API `kind` ("inference" or "management") directly:
    TorchServe's token auth is on; `pool` is an entry of `tiergate status --json`."""
    keys = json.loads(Path(pool["key_file"]).read_text())
    return {"Authorization": f"Bearer {keys[kind]['key']}"}


def tiergate(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO, capture_output=True, text=True, check=check, timeout=timeout,
    )


def stack_config(**overrides) -> dict:
    config = yaml.safe_load(default_config().read_text())
    config["artifacts_dir"] = str(ARTIFACTS)
    config.update(overrides)
    return config


def resnet18_only(config: dict) -> dict:
    """A config serving resnet18 alone (the others stay loaded in the pools, unrouted): for
    tests of policy that route a tier to one pool, which must then serve every model."""
    config["models"] = {"resnet18": config["models"]["resnet18"]}
    for pool in config["pools"].values():
        pool.pop("models", None)
    return config


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    state_dir = tmp_path_factory.mktemp("stack")
    config = stack_config()
    config_file = state_dir / "tiergate.yaml"
    config_file.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    result = tiergate("up", "--detach", "--config", str(config_file), "--state-dir", str(state_dir), check=False)
    assert result.returncode == 0, f"tiergate up failed:\n{result.stdout}\n{result.stderr}"
    running = Stack(f"http://127.0.0.1:{config['port']}", state_dir, config, time.monotonic() - started)
    yield running
    pids = [running.status()["supervisor_pid"]] + [pool["pid"] for pool in running.status()["pools"]]
    down = running.tiergate("down", check=False)
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "tiergate down left processes running"
