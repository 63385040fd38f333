"""The gateway on KubeRay: a RayService whose serveConfigV2 runs gateway.app:app_builder with
the gateway config as `user_config` (in-cluster pool URLs, the pool token file), and with
`coalesce_scope: cluster` the coalescer as its own Serve deployment."""

from __future__ import annotations

import math
from typing import Any

from ..config import GatewayConfig, parse_config
from ..run_settings import ingress_settings, serve_application
from . import autoscaling
from .common import (
    POOL_TOKEN_DIR,
    POOL_TOKEN_SECRET,
    RAY_AUTH_SECRET,
    RAY_SERVICE,
    SECRETS_TO_CREATE,
    container_security,
    http_probe,
    labels,
    max_deadline_s,
    meta,
    pod_security,
    pools,
    service_account,
)
from .output import dump
from .settings import ClusterSettings

RAY_DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080
RAY_AGENT_PORT = 52365
RAY_UID = 1000  # the `ray` user of the rayproject/ray images
RAY_WORKER_CPUS = 2
GATEWAY_REPLICA_CPUS = 1
# A coalescer replica only hops and awaits pool calls: half a CPU, so the autoscaler still
# counts it when it sizes the worker group.
COALESCER_REPLICA_CPUS = 0.5
# The shadow tests' SQLite log: one per worker pod, shared by the pod's replicas (WAL).
SHADOW_LOG_DIR = "/tmp/tiergate-shadow"
PROMETHEUS_MULTIPROC_DIR = "/tmp/tiergate-metrics"


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    return {"ray-service.yaml": [service_account("tiergate-ray-worker", "gateway"), _ray_service(config, settings)]}


def in_cluster_config(config: GatewayConfig, settings: ClusterSettings) -> dict[str, Any]:
    """The gateway YAML as the cluster's gateway sees it: Service URLs, a token file, no launch.

    Only what the YAML sets is carried (defaults stay the gateway's), so a new config field
    with a default changes nothing here; decisions.py says what happens to each field.
    """
    data = config.model_dump(mode="json", exclude_unset=True, exclude={"artifacts_dir"})
    data["host"] = "0.0.0.0"
    data["shadow_log"] = f"{SHADOW_LOG_DIR}/shadow.sqlite"
    for pool in pools(config):
        host = f"{pool.deployment}.{settings.namespace}.svc.cluster.local"
        entry = data["pools"][pool.name]
        entry.pop("local")
        entry.pop("management_url", None)  # (decisions.py: no management key in the cluster)
        entry.pop("management_token_file", None)
        entry.update(
            url=f"http://{host}:{pool.launch.inference_port}",
            metrics_url=f"http://{host}:{pool.launch.metrics_port}/metrics",
            auth_token_file=f"{POOL_TOKEN_DIR}/{SECRETS_TO_CREATE[POOL_TOKEN_SECRET]}",
        )
    parse_config(data, "in-cluster gateway config")
    return data


def serve_config(config: GatewayConfig, settings: ClusterSettings) -> dict[str, Any]:
    deadline = max_deadline_s(config)
    # Whole CPUs for gateway replicas, so that the Ray autoscaler adds worker pods for them.
    shared = {"graceful_shutdown_timeout_s": deadline, "health_check_period_s": 10}
    gateway = {"autoscaling_config": autoscaling.gateway(config, settings), "ray_actor_options": {"num_cpus": GATEWAY_REPLICA_CPUS}, **shared}
    coalescer = {"autoscaling_config": autoscaling.coalescer(config, settings), "ray_actor_options": {"num_cpus": COALESCER_REPLICA_CPUS}, **shared}
    return {
        "proxy_location": "EveryNode",
        "http_options": {
            "host": "0.0.0.0",
            "port": config.port,
            # The slowest tier's deadline, plus the time to write the answer back.
            "request_timeout_s": deadline + 5,
            "keep_alive_timeout_s": 75,
        },
        "applications": [serve_application(config, in_cluster_config(config, settings), gateway, coalescer)],
    }


def _worker_pods(config: GatewayConfig, settings: ClusterSettings, bound: str) -> int:
    """Worker pods for `bound` ("min_replicas" or "max_replicas") of every deployment's replicas."""
    cpus = autoscaling.gateway(config, settings)[bound] * GATEWAY_REPLICA_CPUS
    if config.coalesce_scope == "cluster":
        cpus += autoscaling.coalescer(config, settings)[bound] * COALESCER_REPLICA_CPUS
    return math.ceil(cpus / RAY_WORKER_CPUS)


def _container(config: GatewayConfig, settings: ClusterSettings, name: str, ports: dict[str, int], cpus: int, probes: dict) -> dict:
    resources = {"cpu": str(cpus), "memory": "4Gi"}
    return {
        "name": name,
        "image": settings.image("gateway"),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports.items()],
        "env": [
            # KubeRay's authOptions injects the same; stated here so that no operator
            # version can start this cluster without token auth.
            {"name": "RAY_AUTH_MODE", "value": "token"},
            *({"name": key, "value": value} for key, value in ingress_settings(config).items()),
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": RAY_AUTH_SECRET, "key": "auth_token"}}},
        ],
        "resources": {"requests": resources, "limits": resources},
        **probes,
        "lifecycle": {"preStop": {"exec": {"command": ["ray", "stop"]}}},
        "securityContext": container_security(read_only_root=False),
    }


def _ray_service(config: GatewayConfig, settings: ClusterSettings) -> dict[str, Any]:
    serve_port = config.port
    head = _container(
        config, settings, "ray-head",
        {"gcs": 6379, "dashboard": RAY_DASHBOARD_PORT, "client": 10001, "serve": serve_port, "metrics": RAY_METRICS_PORT},
        2,
        {
            "readinessProbe": http_probe("/api/gcs_healthz", RAY_DASHBOARD_PORT, period=10, failures=6),
            "livenessProbe": http_probe("/api/local_raylet_healthz", RAY_AGENT_PORT, period=10, failures=6),
        },
    )
    worker = _container(
        config, settings, "ray-worker", {"serve": serve_port, "metrics": RAY_METRICS_PORT}, RAY_WORKER_CPUS,
        {
            # The Serve proxy on this node: the pod takes traffic only once it answers.
            "readinessProbe": http_probe("/-/healthz", serve_port, period=5, failures=3),
            "livenessProbe": http_probe("/api/local_raylet_healthz", RAY_AGENT_PORT, period=10, failures=6),
        },
    )
    # Replicas in one pod share one /metrics view (gateway/metrics.py).
    worker["env"].append({"name": "PROMETHEUS_MULTIPROC_DIR", "value": PROMETHEUS_MULTIPROC_DIR})
    worker["volumeMounts"] = [
        {"name": "pool-token", "mountPath": POOL_TOKEN_DIR, "readOnly": True},
        {"name": "prometheus-multiproc", "mountPath": PROMETHEUS_MULTIPROC_DIR},
        {"name": "shadow-log", "mountPath": SHADOW_LOG_DIR},
    ]
    deadline = max_deadline_s(config)
    pod_labels = labels("gateway")
    worker_spec = {
        "serviceAccountName": "tiergate-ray-worker",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(RAY_UID),
        "terminationGracePeriodSeconds": int(deadline) + 30,
        "containers": [worker],
        "volumes": [
            {"name": "pool-token", "secret": {"secretName": POOL_TOKEN_SECRET, "defaultMode": 0o440}},
            {"name": "prometheus-multiproc", "emptyDir": {"sizeLimit": "256Mi"}},
            # shadow_log_max_rows bounds the rows; the limit bounds the file if they are large.
            {"name": "shadow-log", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    head_spec = {
        # No serviceAccountName: KubeRay gives the head (and its autoscaler sidecar) the
        # account and RBAC it creates for the in-tree autoscaler.
        "securityContext": pod_security(RAY_UID),
        "containers": [head],
    }
    min_workers = _worker_pods(config, settings, "min_replicas")
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": meta(RAY_SERVICE, "gateway"),
        "spec": {
            # A new RayCluster is built and must serve before traffic moves to it.
            "upgradeStrategy": {"type": "NewCluster"},
            "excludeHeadPodFromServeSvc": True,
            "serveConfigV2": dump(serve_config(config, settings)),
            "rayClusterConfig": {
                "rayVersion": settings.ray_version,
                "authOptions": {"mode": "token", "secretName": RAY_AUTH_SECRET},
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": 300,
                    "resources": {
                        "requests": {"cpu": "200m", "memory": "512Mi"},
                        "limits": {"cpu": "500m", "memory": "512Mi"},
                    },
                    "securityContext": container_security(read_only_root=True),
                },
                "headGroupSpec": {
                    # No replicas on the head: it keeps GCS, dashboard and the Serve controller.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": {"metadata": {"labels": pod_labels}, "spec": head_spec},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gateway",
                        "replicas": min_workers,
                        "minReplicas": min_workers,
                        "maxReplicas": _worker_pods(config, settings, "max_replicas"),
                        "rayStartParams": {},
                        "template": {"metadata": {"labels": pod_labels}, "spec": worker_spec},
                    }
                ],
            },
        },
    }
