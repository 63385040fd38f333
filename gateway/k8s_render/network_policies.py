"""Who may talk to whom: the namespace (restricted Pod Security, enforced) and the
NetworkPolicies of the pools and the Ray pods."""

from __future__ import annotations

from typing import Any

from ..config import GatewayConfig
from .common import PROXY_PORT_NAME, labels, meta
from .ray_service import RAY_DASHBOARD_PORT, RAY_METRICS_PORT
from .settings import ClusterSettings


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    return {"namespace.yaml": [_namespace(settings)], "network-policies.yaml": _policies(config, settings)}


def _namespace(settings: ClusterSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": settings.namespace,
            "labels": {
                **labels("namespace"),
                # Pods here get the restricted Pod Security Standard, enforced.
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def _in_namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _tcp(*ports: int | str) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _policies(config: GatewayConfig, settings: ClusterSettings) -> list[dict[str, Any]]:
    gateway_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}
    prometheus = {
        **_in_namespace(settings.monitoring_namespace),
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    operators = _in_namespace(settings.operators_namespace)
    kuberay = _in_namespace(settings.kuberay_namespace)
    dns = {"to": [_in_namespace("kube-system")], "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    pools = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("tiergate-pools", "pool"),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "pool"}},
            "policyTypes": ["Ingress", "Egress"],
            # Named ports: each pool's own numbers come from its container ports.
            "ingress": [
                {"from": [gateway_pods], "ports": _tcp(PROXY_PORT_NAME)},
                {"from": [prometheus], "ports": _tcp("metrics")},
                {"from": [operators], "ports": _tcp("management", "metrics")},
            ],
            # A pool calls nobody; DNS only, for the resolver the JVM may consult.
            "egress": [dns],
        },
    }
    ray = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("tiergate-ray", "gateway"),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                # Ray's own traffic (GCS, raylets, object transfer) uses many ports, all in-cluster.
                {"from": [gateway_pods]},
                # KubeRay deploys serveConfigV2 through the dashboard and checks the proxies.
                {"from": [kuberay], "ports": _tcp(RAY_DASHBOARD_PORT, config.port)},
                {"from": [prometheus], "ports": _tcp(config.port, RAY_METRICS_PORT)},
                # The inference front door; narrow it to your ingress controller's namespace.
                {"from": [{"namespaceSelector": {}}], "ports": _tcp(config.port)},
            ],
        },
    }
    return [pools, ray]
