"""TorchServe pools' own metrics, re-exported on the gateway's /metrics with a `pool` label.

Operators scrape one target. Each pool's Prometheus endpoint is fetched through the
pool client with a short timeout (a dead pool costs /metrics at most that, and shows
as `tiergate_pool_scrape_up{pool} 0`), parsed with prometheus-client's parser, and
written back with the pool's name added to every series.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from .config import GatewayConfig
from .pool_client import PoolClient

SCRAPE_TIMEOUT_S = 0.5


class _Relabelled:
    """A one-shot collector yielding already-parsed families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def pool_exposition(config: GatewayConfig, pools: PoolClient) -> bytes:
    targets = [name for name, pool in config.pools.items() if pool.metrics_url]
    texts = await asyncio.gather(
        *(pools.scrape(name, config.pools[name].metrics_url, SCRAPE_TIMEOUT_S) for name in targets)
    )
    up = GaugeMetricFamily(
        "tiergate_pool_scrape_up", "1 when the pool's own metrics endpoint answered this scrape", labels=["pool"]
    )
    families: list[Metric] = [up]
    for pool, text in zip(targets, texts):
        up.add_metric([pool], 0.0 if text is None else 1.0)
        if text is not None:
            families.extend(relabel(text, pool))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Relabelled(families))
    return generate_latest(registry)


def relabel(text: str, pool: str) -> list[Metric]:
    """Parse one pool's exposition and add `pool` to every sample; unparsable text yields nothing."""
    relabelled = []
    try:
        for family in text_string_to_metric_families(text):
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                copy.add_sample(
                    sample.name, {**sample.labels, "pool": pool}, sample.value, sample.timestamp, sample.exemplar
                )
            relabelled.append(copy)
    except ValueError:
        return []
    return relabelled
