"""The Grafana dashboard, as a ConfigMap the dashboard sidecar picks up; its panels are a
file (files/dashboard-panels.yaml), laid out two a row here."""

from __future__ import annotations

import json
from typing import Any

import yaml

from ..config import GatewayConfig
from .common import labels, payload
from .settings import ClusterSettings


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    panels = [_panel(index, spec) for index, spec in enumerate(yaml.safe_load(payload("dashboard-panels.yaml")))]
    namespace = settings.namespace
    board = {
        "title": "tiergate",
        "uid": "tiergate",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "tags": ["tiergate"],
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "namespace", "type": "custom", "query": namespace, "current": {"text": namespace, "value": namespace}},
            ]
        },
        "panels": panels,
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "tiergate-dashboard",
            # Picked up by the Grafana dashboard sidecar (kube-prometheus-stack default label).
            "labels": {**labels("gateway"), "grafana_dashboard": "1"},
        },
        "data": {"tiergate.json": json.dumps(board, indent=2, sort_keys=True) + "\n"},
    }
    return {"dashboard.yaml": [config_map]}


def _panel(index: int, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": spec["title"],
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": spec["unit"]}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(spec["targets"])
        ],
    }
