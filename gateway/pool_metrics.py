"""TorchServe pools' own metrics, re-exported on the gateway's /metrics with a `pool` label.

Operators scrape one target. Each pool's Prometheus endpoint is fetched through the
pool client with a short timeout (a dead pool costs /metrics at most that, and shows
as `tiergate_pool_scrape_up{pool} 0`), and its series are passed through as the pool wrote
them, with only `pool` added: the same names, HELP and TYPE, so TorchServe's own dashboards
and checks work on the gateway's scrape. (Re-serializing through prometheus-client would
rename a counter like TorchServe's `Requests2XX` to `Requests2XX_total`.) A family several
pools export is written once, with every pool's samples.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .config import GatewayConfig
from .pool_client import PoolClient

SCRAPE_TIMEOUT_S = 0.5
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{?)(.*)")
UP_HEADER = (
    "# HELP tiergate_pool_scrape_up 1 when the pool's own metrics endpoint answered this scrape\n"
    "# TYPE tiergate_pool_scrape_up gauge\n"
)


@dataclass
class _Family:
    """One metric family's metadata lines and its samples from every pool, as text."""

    metadata: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)


async def pool_exposition(config: GatewayConfig, pools: PoolClient) -> bytes:
    targets = [name for name, pool in config.pools.items() if pool.metrics_url]
    texts = await asyncio.gather(
        *(pools.scrape(name, config.pools[name].metrics_url, SCRAPE_TIMEOUT_S) for name in targets)
    )
    families: dict[str, _Family] = {}
    up = []
    for pool, text in zip(targets, texts):
        up.append(f'tiergate_pool_scrape_up{{pool="{pool}"}} {0.0 if text is None else 1.0}\n')
        if text is not None:
            relabel(text, pool, families)
    lines = [UP_HEADER, *up]
    for family in families.values():
        lines.extend(family.metadata)
        lines.extend(family.samples)
    return "".join(lines).encode()


def relabel(text: str, pool: str, families: dict[str, _Family]) -> None:
    """Add one pool's series to `families`, each sample with `pool` added; text that is not a
    valid exposition adds nothing (it would make the whole scrape unreadable)."""
    try:
        for _ in text_string_to_metric_families(text):
            pass
    except ValueError:
        return
    current: _Family | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                current = families.setdefault(parts[2], _Family())
                if not any(kept.split(None, 2)[1] == parts[1] for kept in current.metadata):  # once per family
                    current.metadata.append(line + "\n")
            continue
        match = SAMPLE.match(line.strip())
        if match is None:
            continue
        name, brace, rest = match.groups()
        if current is None:  # a sample without HELP or TYPE: a family of its own
            current = families.setdefault(name, _Family())
        labels = f'{{pool="{pool}",' if brace else f'{{pool="{pool}"}}'
        current.samples.append(f"{name}{labels}{rest}\n")
