"""Start a tiergate stack from a config for a benchmark, and stop it afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import yaml

from gateway.cli import default_config
from model.photos import load_photo, package_dir


def stop_on_sigterm() -> None:
    """Let SIGTERM (timeout, kill) unwind like Ctrl-C, so that a bench's `finally` stops what it
    started: by default SIGTERM ends Python at once, leaving its pools and stacks running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def base_config(**overrides) -> dict:
    config = yaml.safe_load(default_config().read_text())
    config.update(overrides)
    return config


def tiergate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True)


@contextlib.contextmanager
def running_stack(config: dict) -> Iterator[dict]:
    """Yields `tiergate status --json` plus `ready_s` (wall time of `up --detach`), `apply` and `state_dir`."""
    stop_on_sigterm()
    state_dir = Path(tempfile.mkdtemp(prefix="tiergate-bench-"))
    config_file = state_dir / "tiergate.yaml"
    config_file.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    up = tiergate("up", "--detach", "--config", str(config_file), "--state-dir", str(state_dir))
    if up.returncode != 0:
        raise RuntimeError(f"tiergate up failed:\n{up.stdout}\n{up.stderr}")
    ready_s = time.monotonic() - started

    def apply(new_config: dict) -> None:
        config_file.write_text(yaml.safe_dump(new_config))
        reload = tiergate("reload", "--state-dir", str(state_dir))
        if reload.returncode != 0:
            raise RuntimeError(reload.stderr)

    try:
        status = json.loads(tiergate("status", "--json", "--state-dir", str(state_dir)).stdout)
        yield {**status, "ready_s": ready_s, "apply": apply, "state_dir": str(state_dir)}
    finally:
        tiergate("down", "--state-dir", str(state_dir))


def cat_jpeg() -> bytes:
    buffer = io.BytesIO()
    load_photo(package_dir("skimage") / "data/chelsea.png").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def distinct_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Different small photos' crops: real JPEGs, no two alike, cheap to decode."""
    import random

    rng = random.Random(seed)
    photo = load_photo(package_dir("skimage") / "data/astronaut.png")
    images = []
    for _ in range(count):
        left, top = rng.randrange(0, photo.width - 96), rng.randrange(0, photo.height - 96)
        buffer = io.BytesIO()
        photo.crop((left, top, left + 96, top + 96)).save(buffer, format="JPEG", quality=rng.randrange(70, 95))
        images.append(buffer.getvalue())
    return images


def gateway_counter(url: str, name: str, **labels: str) -> float:
    """Sum of a counter's samples on the gateway's /metrics that carry `labels`."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", trust_env=False, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
