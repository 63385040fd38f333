"""Load a tiergate deployment of your own with Locust: a mix of tiers, real images.

Locust is not a tiergate dependency; install it where you run the load:

    pip install locust
    locust -f bench/locustfile.py --host https://tiergate.example.com \\
        --users 50 --spawn-rate 10 --run-time 5m --headless

Settings come from the environment:

    TIERGATE_MODEL        model name in the URL                 (default resnet18)
    TIERGATE_TIER_WEIGHTS tier=weight,...                       (default premium=1,standard=3,batch=1)
    TIERGATE_API_KEY      sent as `Authorization: Bearer ...`   (when the deployment uses API keys)
    TIERGATE_IMAGES       a directory of .jpg/.jpeg/.png files  (default: bench/cat.jpg, beside this file)
    TIERGATE_UNIQUE       1: append a distinct trailer to every body so that coalescing and
                          the response cache cannot answer it (default 1; 0 measures them)

Each tier is reported as its own request name (`POST /predictions [standard]`), and a
200 whose `X-Tiergate-Tier` is not the tier asked for counts as a failure. 429 and 503
(shed, pool saturated) are failures too: they are what overload looks like.

For the gateway's own overhead against NGINX, a FastAPI proxy and direct TorchServe on
one machine, use `tiergate bench` (bench/overhead.py), which drives wrk instead: a Python
load generator on a small machine measures itself as much as the gateway.
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

from locust import FastHttpUser, between, task

MODEL = os.environ.get("TIERGATE_MODEL", "resnet18")
# scikit-image's Chelsea the cat, shipped as a file: Locust's venv needs nothing but locust.
DEFAULT_IMAGE = Path(__file__).with_name("cat.jpg")
UNIQUE = os.environ.get("TIERGATE_UNIQUE", "1") == "1"


def tier_weights() -> dict[str, int]:
    text = os.environ.get("TIERGATE_TIER_WEIGHTS", "premium=1,standard=3,batch=1")
    weights = {}
    for entry in text.split(","):
        tier, _, weight = entry.partition("=")
        weights[tier.strip()] = int(weight or 1)
    return weights


def load_images() -> list[tuple[bytes, str]]:
    directory = os.environ.get("TIERGATE_IMAGES")
    if directory:
        types = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
        images = [
            (path.read_bytes(), types[path.suffix.lower()])
            for path in sorted(Path(directory).iterdir())
            if path.suffix.lower() in types
        ]
        if not images:
            raise SystemExit(f"TIERGATE_IMAGES={directory} holds no .jpg/.jpeg/.png files")
        return images
    return [(DEFAULT_IMAGE.read_bytes(), "image/jpeg")]


IMAGES = load_images()
WEIGHTS = tier_weights()
TIERS, TIER_WEIGHTS = list(WEIGHTS), list(WEIGHTS.values())
SERIAL = itertools.count()


class TiergateUser(FastHttpUser):
    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        self.auth = {}
        key = os.environ.get("TIERGATE_API_KEY")
        if key:
            self.auth = {"Authorization": f"Bearer {key}"}

    @task
    def predict(self) -> None:
        tier = random.choices(TIERS, TIER_WEIGHTS)[0]
        body, content_type = random.choice(IMAGES)
        if UNIQUE:  # decoders ignore bytes after the image's end marker
            body += b"locust-%d" % next(SERIAL)
        headers = {"Content-Type": content_type, "X-SLA-Tier": tier, **self.auth}
        with self.client.post(
            f"/predictions/{MODEL}", data=body, headers=headers, name=f"POST /predictions [{tier}]",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif response.headers.get("X-Tiergate-Tier") != tier:
                response.failure(f"served as tier {response.headers.get('X-Tiergate-Tier')!r}, asked {tier!r}")
            else:
                response.success()
