"""Names, labels and security settings every resource family shares, and the pools as the
cluster sees them (a Kubernetes name and the local launch settings they are rendered from)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from ..config import ConfigError, GatewayConfig, LocalLaunch, PoolConfig

APP = "tiergate"
RAY_SERVICE = "tiergate"
RAY_AUTH_SECRET = "tiergate-ray-auth"  # key auth_token: KubeRay's authOptions convention
POOL_TOKEN_SECRET = "tiergate-pool-token"  # key token: what the gateway presents to pools
POOL_TOKEN_DIR = "/var/run/secrets/tiergate/pool-token"
SECRETS_TO_CREATE = {RAY_AUTH_SECRET: "auth_token", POOL_TOKEN_SECRET: "token"}

MODEL_SERVER_HOME = PurePosixPath("/home/model-server")
MODEL_STORE = MODEL_SERVER_HOME / "model-store"
# TorchServe's working directory: where it writes key_file.json for the auth proxy to read.
TORCHSERVE_RUN_DIR = MODEL_SERVER_HOME / "run"
# TorchServe's own inference listener, on loopback only: the auth proxy owns the pool port.
TORCHSERVE_LOOPBACK_PORT = 18080
PROXY_PORT_NAME = "inference"
# The pool images' user (k8s/images/pool-*.Dockerfile): high, so it maps to no host account.
POOL_UID = 10001


class RenderError(ConfigError):
    """A gateway config that cannot be turned into cluster manifests, with the reason."""


@dataclass(frozen=True)
class Pool:
    name: str  # as in the gateway config
    dns: str  # as in Kubernetes object names
    config: PoolConfig

    @property
    def launch(self) -> LocalLaunch:
        assert self.config.local is not None  # pools() refuses a pool without it
        return self.config.local

    @property
    def deployment(self) -> str:
        return f"tiergate-pool-{self.dns}"

    @property
    def is_gpu(self) -> bool:
        return self.launch.variant == "gpu"

    @property
    def selector(self) -> dict[str, str]:
        # The gateway's own pool name (a valid label value), so metrics can be joined on it.
        return {"app.kubernetes.io/name": APP, "tiergate.io/pool": self.name}


def pools(config: GatewayConfig) -> list[Pool]:
    """The config's pools as the cluster runs them; refuses what no Deployment can be made of."""
    found = []
    for name, pool in config.pools.items():
        if pool.local is None:
            raise RenderError(
                f"pools.{name}.local: pool {name!r} has no `local` launch settings; its ports, variant, "
                "workers and batch size are what its Deployment is rendered from"
            )
        dns = re.sub(r"[_.]", "-", name.lower()).strip("-")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", dns):
            raise RenderError(f"pools.{name}: pool name {name!r} does not make a Kubernetes name (got {dns!r})")
        local = pool.local
        if TORCHSERVE_LOOPBACK_PORT in {local.inference_port, local.management_port, local.metrics_port}:
            raise RenderError(
                f"pools.{name}.local: pool {name!r} uses port {TORCHSERVE_LOOPBACK_PORT}, "
                "reserved for TorchServe behind the auth proxy"
            )
        found.append(Pool(name, dns, pool))
    dns_names = [pool.dns for pool in found]
    if len(set(dns_names)) != len(dns_names):
        raise RenderError(f"pools: pool names collide once made Kubernetes names: {dns_names}")
    return found


def max_deadline_s(config: GatewayConfig) -> float:
    return max(tier.deadline_ms for tier in config.tiers.values()) / 1000


def labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/part-of": APP, "app.kubernetes.io/component": component}


def meta(name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": labels(component), **extra}


def service_account(name: str, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(name, component),
        "automountServiceAccountToken": False,
    }


def http_probe(path: str, port: int | str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def payload(name: str) -> str:
    """A file shipped beside the renderer (gateway/k8s_render/files/): scripts, templates, panels."""
    return resources.files(__package__).joinpath("files", name).read_text()
