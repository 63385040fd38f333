"""The TorchServe pools: per pool a ConfigMap (TorchServe properties, the auth proxy's nginx
template), a Deployment (TorchServe + auth proxy), a Service and a PodDisruptionBudget.

Each pool loads exactly the MARs of the models it serves, with the batch size, workers,
queue and heap of its `local` settings: the same properties the local stack runs
(gateway/run_settings.py), with the listeners and token auth of a pod."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..config import GatewayConfig
from ..run_settings import pool_mars, properties_text, torchserve_properties
from . import auth_proxy
from .common import (
    MODEL_STORE,
    POOL_TOKEN_SECRET,
    POOL_UID,
    PROXY_PORT_NAME,
    TORCHSERVE_LOOPBACK_PORT,
    TORCHSERVE_RUN_DIR,
    Pool,
    container_security,
    http_probe,
    labels,
    max_deadline_s,
    meta,
    pod_security,
    pools,
    service_account,
)
from .settings import ClusterSettings

PROPERTIES_HEADER = (
    "TorchServe for pool {name!r}: inference on loopback behind the auth proxy,\n"
    "management and metrics on the pod network (NetworkPolicy decides who reaches them)."
)


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    files: dict[str, list[dict[str, Any]]] = {"pools.yaml": [service_account("tiergate-pool", "pool")]}
    for pool in pools(config):
        files[f"pool-{pool.dns}.yaml"] = _pool(config, settings, pool)
    return files


def properties(config: GatewayConfig, pool: Pool) -> str:
    """The pool's config.properties: the local stack's, with the listeners and auth of a pod."""
    values = torchserve_properties(pool.launch, pool_mars(config, pool.name), str(MODEL_STORE))
    values.update(
        inference_address=f"http://127.0.0.1:{TORCHSERVE_LOOPBACK_PORT}",
        management_address=f"http://0.0.0.0:{pool.launch.management_port}",
        metrics_address=f"http://0.0.0.0:{pool.launch.metrics_port}",
        disable_token_authorization="false",  # on in every pod, whatever the local launch says
    )
    return properties_text(values, PROPERTIES_HEADER.format(name=pool.name))


def _pool(config: GatewayConfig, settings: ClusterSettings, pool: Pool) -> list[dict[str, Any]]:
    launch = pool.launch
    pod_labels = {**labels("pool"), "tiergate.io/pool": pool.name}
    config_data = {"config.properties": properties(config, pool), auth_proxy.TEMPLATE_KEY: auth_proxy.nginx_template(config, pool)}
    # Pods restart when anything they read at start changes.
    config_hash = hashlib.sha256(json.dumps([config_data, auth_proxy.scripts()]).encode()).hexdigest()[:16]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": "tiergate-pool",
        "automountServiceAccountToken": False,
        # Both containers run as one user: TorchServe writes key_file.json mode 0600.
        "securityContext": pod_security(POOL_UID),
        "terminationGracePeriodSeconds": int(max_deadline_s(config)) + 15,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": pool.selector},
            }
            for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
        ],
        "containers": [_torchserve(settings, pool), auth_proxy.container(pool, settings)],
        "volumes": [
            {"name": "config", "configMap": {"name": pool.deployment}},
            {"name": "auth-proxy", "configMap": {"name": auth_proxy.SCRIPTS_CONFIG_MAP}},
            {"name": "pool-token", "secret": {"secretName": POOL_TOKEN_SECRET, "defaultMode": 0o440}},
            {"name": "run", "emptyDir": {"sizeLimit": "16Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
            {"name": "proxy-tmp", "emptyDir": {"sizeLimit": "512Mi"}},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(
            pool.deployment,
            "pool",
            annotations={
                "checkov.io/skip1": "CKV_K8S_43=image tags are pinned per environment with kustomize images:; pin digests there",
                "checkov.io/skip2": "CKV_K8S_15=IfNotPresent: tags are immutable release tags, and pulls must not gate restarts",
            },
        ),
        # No spec.replicas: the ScaledObject (autoscaling.py) owns the count.
        "spec": {
            "selector": {"matchLabels": pool.selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {"tiergate.io/config-hash": config_hash}},
                "spec": pod_spec,
            },
        },
    }
    ports = [
        (PROXY_PORT_NAME, launch.inference_port),
        ("management", launch.management_port),
        ("metrics", launch.metrics_port),
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": pool.deployment, "labels": pod_labels},
        "spec": {
            "selector": pool.selector,
            "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in ports],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(pool.deployment, "pool"),
        # maxUnavailable, not minAvailable: a one-replica pool must still let a node drain.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pool.selector}},
    }
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(pool.deployment, "pool"), "data": config_data}
    return [config_map, deployment, service, pdb]


def _torchserve(settings: ClusterSettings, pool: Pool) -> dict[str, Any]:
    launch = pool.launch
    # CPU inference: a core per worker plus one for the Java frontend; GPU pools feed the device.
    cpu = launch.workers + 1
    memory_gi = (4 if pool.is_gpu else 1) + launch.workers
    return {
        "name": "torchserve",
        "image": settings.image("pool-gpu" if pool.is_gpu else "pool-cpu"),
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "torchserve", "--start", "--foreground", "--ncs",
            "--model-store", str(MODEL_STORE),
            "--ts-config", "/etc/torchserve/config.properties",
        ],
        "workingDir": str(TORCHSERVE_RUN_DIR),
        "env": [
            {"name": "TMPDIR", "value": "/tmp"},
            {"name": "LOG_LOCATION", "value": "/tmp/logs"},
            {"name": "METRICS_LOCATION", "value": "/tmp/logs"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
            # torch intra-op threads per worker, as the local stack sets them.
            {"name": "OMP_NUM_THREADS", "value": str(launch.threads)},
            {"name": "MKL_NUM_THREADS", "value": str(launch.threads)},
        ],
        "ports": [
            {"name": "management", "containerPort": launch.management_port},
            {"name": "metrics", "containerPort": launch.metrics_port},
        ],
        "resources": {
            "requests": {"cpu": str(cpu), "memory": f"{memory_gi}Gi"},
            "limits": {"cpu": str(cpu), "memory": f"{memory_gi}Gi"},
        },
        # /ping needs TorchServe's token, so it is probed through the auth proxy, which adds it;
        # the metrics listener (no token) proves the frontend itself is alive.
        "startupProbe": http_probe("/ping", PROXY_PORT_NAME, period=5, failures=120),
        "readinessProbe": http_probe("/ping", PROXY_PORT_NAME, period=5, failures=2),
        "livenessProbe": http_probe("/metrics", "metrics", period=10, failures=6),
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": container_security(read_only_root=True),
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/torchserve/config.properties", "subPath": "config.properties", "readOnly": True},
            {"name": "run", "mountPath": str(TORCHSERVE_RUN_DIR)},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
