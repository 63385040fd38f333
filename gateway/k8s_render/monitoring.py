"""Scraping and SLOs: a PodMonitor for the gateway, a ServiceMonitor for the pools, and a
PrometheusRule with per-tier latency quantiles, SLO ratios and burn-rate alerts; the targets
come from the cluster settings (`slo`, `default_slo`)."""

from __future__ import annotations

from typing import Any

from prometheus_client.utils import floatToGoString

from ..config import GatewayConfig
from .common import meta
from .settings import ClusterSettings

# Multi-window, multi-burn-rate alerting (Google SRE workbook, ch. 5): a page when the
# budget of a 30-day window would be gone in ~2 days (14.4x) or ~5 days (6x), a ticket
# for slower burns; each alert needs its long and its short window to agree.
BURN_RATE_ALERTS = (
    ("page", "1h", "5m", 14.4),
    ("page", "6h", "30m", 6.0),
    ("ticket", "1d", "2h", 3.0),
    ("ticket", "3d", "6h", 1.0),
)
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
REQUESTS, DURATION = "tiergate_requests_total", "tiergate_request_duration_seconds"


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    return {"monitoring.yaml": _monitors(), "slo-rules.yaml": [_slo_rules(config, settings)]}


def _monitors() -> list[dict[str, Any]]:
    gateway = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta("tiergate-gateway", "gateway"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/component": "gateway", "ray.io/node-type": "worker"}},
            "podMetricsEndpoints": [
                {"port": "serve", "path": "/metrics", "interval": "15s"},
                {"port": "metrics", "path": "/metrics", "interval": "30s"},
            ],
        },
    }
    pools = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta("tiergate-pools", "pool"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/component": "pool"}},
            "endpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": "15s",
                    # The gateway's name for the pool, as on tiergate_pool_inflight.
                    "relabelings": [
                        {"sourceLabels": ["__meta_kubernetes_service_label_tiergate_io_pool"], "targetLabel": "pool"}
                    ],
                }
            ],
        },
    }
    return [gateway, pools]


def _ratios(tier: str, le: str) -> list[dict[str, Any]]:
    sel = f'tier="{tier}"'
    ok = f'{sel},code=~"2.."'
    rules = []
    for window in SLO_WINDOWS:
        total = f"sum by (namespace) (rate({REQUESTS}{{{sel}}}[{window}]))"
        # `or ... * 0`: a tier with traffic and no 5xx has an error ratio of 0, not none.
        failed = f'sum by (namespace) (rate({REQUESTS}{{{sel},code=~"5.."}}[{window}]))'
        rules.append({
            "record": f"tiergate:availability_errors:ratio_rate{window}",
            "expr": f"({failed} or {total} * 0) / {total}",
            "labels": {"tier": tier},
        })
        rules.append({
            "record": f"tiergate:latency_errors:ratio_rate{window}",
            "expr": (
                f'1 - sum by (namespace) (rate({DURATION}_bucket{{{ok},le="{le}"}}[{window}]))'
                f" / sum by (namespace) (rate({DURATION}_count{{{ok}}}[{window}]))"
            ),
            "labels": {"tier": tier},
        })
    return rules


def _alerts(tier: str, sli: str, objective: float, what: str) -> list[dict[str, Any]]:
    budget = 1 - objective
    alerts = []
    for severity in ("page", "ticket"):
        conditions = [
            f"(tiergate:{sli}_errors:ratio_rate{long}{{tier=\"{tier}\"}} > {_num(rate * budget)}"
            f" and tiergate:{sli}_errors:ratio_rate{short}{{tier=\"{tier}\"}} > {_num(rate * budget)})"
            for level, long, short, rate in BURN_RATE_ALERTS
            if level == severity
        ]
        alerts.append({
            "alert": f"Tiergate{sli.capitalize()}BudgetBurn",
            "expr": "\n or ".join(conditions),
            "for": "2m" if severity == "page" else "15m",
            "labels": {"severity": severity, "tier": tier, "slo": sli},
            "annotations": {
                "summary": f"Tier {tier} is burning its {sli} error budget too fast",
                "description": (
                    f"More than the budget ({_num(budget * 100)}% of requests {what}) "
                    f"is being spent at a rate that exhausts a 30-day budget early; "
                    f"see the tiergate dashboard for the pool and status codes."
                ),
            },
        })
    return alerts


def _slo_rules(config: GatewayConfig, settings: ClusterSettings) -> dict[str, Any]:
    recording: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for tier in config.tiers:
        slo = settings.slo_for(tier)
        le = floatToGoString(slo.latency_threshold_s)
        recording += _ratios(tier, le)
        alerts += _alerts(tier, "availability", slo.availability, "answered 5xx")
        alerts += _alerts(tier, "latency", slo.latency, f"slower than {le}s")
    quantiles = [
        {
            "record": f"tiergate:request_duration_seconds:p{round(q * 100)}_rate5m",
            "expr": f"histogram_quantile({q}, sum by (namespace, tier, le) (rate({DURATION}_bucket[5m])))",
        }
        for q in LATENCY_QUANTILES
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": meta("tiergate-slo", "gateway"),
        "spec": {
            "groups": [
                {"name": "tiergate-latency-quantiles", "interval": "30s", "rules": quantiles},
                {"name": "tiergate-slo-ratios", "interval": "30s", "rules": recording},
                {"name": "tiergate-slo-alerts", "rules": alerts},
            ]
        },
    }


def _num(value: float) -> str:
    """A threshold as PromQL text: short and exact enough (14.4 * 0.001 -> 0.0144)."""
    return f"{value:.6g}"
