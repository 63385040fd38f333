"""How each part scales: Ray Serve autoscaling for the gateway (and, with `coalesce_scope:
cluster`, the coalescer) deployments, KEDA ScaledObjects for the pool Deployments."""

from __future__ import annotations

import math
from typing import Any

from ..config import GatewayConfig
from .common import Pool, meta, pools
from .settings import ClusterSettings


def _calls_per_replica(config: GatewayConfig) -> int:
    # A replica is "busy" once it holds as many calls as all its pool slots together: past
    # that it only queues, and another replica (with its own slots) helps.
    return sum(pool.max_concurrency for pool in config.pools.values())


def _serve(replicas: int, max_replicas: int, config: GatewayConfig) -> dict[str, Any]:
    return {
        "min_replicas": replicas,
        "initial_replicas": replicas,
        "max_replicas": max(replicas, max_replicas),
        "target_ongoing_requests": _calls_per_replica(config),
        "upscale_delay_s": 30,
        "downscale_delay_s": 300,
    }


def gateway(config: GatewayConfig, settings: ClusterSettings) -> dict[str, Any]:
    """Serve's autoscaling_config of the gateway deployment: `replicas` is its floor."""
    return _serve(config.replicas, settings.gateway_max_replicas, config)


def coalescer(config: GatewayConfig, settings: ClusterSettings) -> dict[str, Any]:
    """The coalescer's, with the same knobs: it holds the pool calls the gateway replicas hand it."""
    return _serve(config.coalescer_replicas, settings.coalescer_max_replicas, config)


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    """A KEDA ScaledObject per pool, in the pool's file."""
    return {f"pool-{pool.dns}.yaml": [_scaled_object(settings, pool)] for pool in pools(config)}


def _scaled_object(settings: ClusterSettings, pool: Pool) -> dict[str, Any]:
    launch = pool.launch
    scaling = getattr(settings.pool_scaling, launch.variant)
    # One batch in service and one waiting per worker: past that a request only queues.
    inflight_per_replica = 2 * launch.workers * launch.batch_size
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(pool.deployment, "pool"),
        "spec": {
            "scaleTargetRef": {"name": pool.deployment},
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            # Prometheus unreachable: hold enough capacity rather than guess low.
            "fallback": {
                "failureThreshold": 3,
                "replicas": max(scaling.min_replicas, math.ceil(scaling.max_replicas / 2)),
            },
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": 300,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        }
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": settings.prometheus_url,
                        "query": f'sum(tiergate_pool_inflight{{namespace="{settings.namespace}",pool="{pool.name}"}})',
                        "threshold": str(inflight_per_replica),
                    },
                }
            ],
        },
    }
