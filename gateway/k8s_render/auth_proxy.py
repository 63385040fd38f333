"""The auth proxy (nginx) beside each TorchServe pod.

TorchServe 0.12 makes its own random keys at start and cannot be given one, so the gateway
cannot know them; it presents the shared pool token (a Secret) instead, checked here, and the
request goes on to TorchServe on loopback with the pod's own inference key. The nginx template
and both scripts are files in files/, shipped with the package."""

from __future__ import annotations

import math
from typing import Any

from ..config import GatewayConfig
from .common import (
    POOL_TOKEN_DIR,
    PROXY_PORT_NAME,
    TORCHSERVE_LOOPBACK_PORT,
    Pool,
    container_security,
    http_probe,
    max_deadline_s,
    meta,
    payload,
)
from .settings import ClusterSettings

SCRIPTS_CONFIG_MAP = "tiergate-auth-proxy"
START_SCRIPT = "start.sh"
KEY_CHECK_SCRIPT = "key-is-current.sh"
TEMPLATE_KEY = "auth-proxy.conf.template"


def scripts() -> dict[str, str]:
    """The scripts' ConfigMap data: start (wait for TorchServe's key, fill in tokens, run nginx)
    and liveness (the key nginx holds is still TorchServe's)."""
    return {START_SCRIPT: payload("auth-proxy-start.sh"), KEY_CHECK_SCRIPT: payload("auth-proxy-key-is-current.sh")}


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[dict[str, Any]]]:
    """The scripts' ConfigMap, shared by every pool."""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(SCRIPTS_CONFIG_MAP, "pool"), "data": scripts()}
    return {"pools.yaml": [config_map]}


def nginx_template(config: GatewayConfig, pool: Pool) -> str:
    """This pool's nginx config template; the start script fills in the two tokens with envsubst."""
    # The largest body any model of this pool admits: the proxy must never be the tighter limit.
    max_body = max(config.body_limit(model) for model in config.pool_models(pool.name))
    return (
        payload("auth-proxy.conf.template")
        .replace("@LISTEN_PORT@", str(pool.launch.inference_port))
        .replace("@TORCHSERVE_PORT@", str(TORCHSERVE_LOOPBACK_PORT))
        .replace("@MAX_BODY_BYTES@", str(max_body))
        .replace("@TIMEOUT_S@", str(math.ceil(max_deadline_s(config))))
    )


def container(pool: Pool, settings: ClusterSettings) -> dict[str, Any]:
    return {
        "name": "auth-proxy",
        "image": settings.auth_proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", f"/opt/tiergate/{START_SCRIPT}"],
        "ports": [{"name": PROXY_PORT_NAME, "containerPort": pool.launch.inference_port}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "readinessProbe": http_probe("/ping", PROXY_PORT_NAME, period=5, failures=2),
        # TorchServe makes a new key when it restarts; a proxy holding the old one restarts too.
        "livenessProbe": {
            "exec": {"command": ["/bin/sh", f"/opt/tiergate/{KEY_CHECK_SCRIPT}"]},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "initialDelaySeconds": 30,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": container_security(read_only_root=True),
        "volumeMounts": [
            {"name": "auth-proxy", "mountPath": "/opt/tiergate", "readOnly": True},
            {"name": "config", "mountPath": f"/etc/tiergate/{TEMPLATE_KEY}", "subPath": TEMPLATE_KEY, "readOnly": True},
            {"name": "run", "mountPath": "/run/torchserve", "readOnly": True},
            {"name": "pool-token", "mountPath": POOL_TOKEN_DIR, "readOnly": True},
            {"name": "proxy-tmp", "mountPath": "/tmp"},
        ],
    }
