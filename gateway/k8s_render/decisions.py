"""What becomes of every gateway setting on the cluster: carried in the RayService's
user_config, rendered into manifests, replaced by the cluster's own value, baked into the
images, or refused with a message naming the setting. Nothing is silently dropped:
tests/k8s/test_decisions.py walks the config model and fails on a field missing here."""

from __future__ import annotations

from pathlib import Path

from ..config import GatewayConfig
from .common import RenderError

USER_CONFIG = "user_config"  # carried as set in the RayService's serveConfigV2 user_config; the gateway reads it
MANIFESTS = "manifests"  # rendered into the named manifests (and carried in user_config where the gateway reads it)
REPLACED = "replaced"  # the cluster's own value stands in for the local one
BUILD = "build"  # shapes the images (k8s/images) built from `tiergate build-models` output
REFUSED = "refused"  # render-k8s fails naming it (see refuse())

# Dotted paths through the config model; `*` is any key of a mapping or item of a list.
DECISIONS: dict[str, tuple[str, str]] = {
    "host": (REPLACED, "0.0.0.0 in the pod; the Serve proxy listens on the pod network"),
    "port": (MANIFESTS, "serveConfigV2 http_options.port, Ray container ports, probes, NetworkPolicies, PodMonitor"),
    "tier_header": (USER_CONFIG, ""),
    "default_tier": (USER_CONFIG, ""),
    "max_body_bytes": (MANIFESTS, "user_config; each pool's auth proxy client_max_body_size"),
    "artifacts_dir": (REFUSED, "other than `artifacts`: the pool images copy artifacts/model-store"),
    "replicas": (MANIFESTS, "the gateway's Serve autoscaling floor and the Ray worker group's size"),
    "ingress": (MANIFESTS, "RAY_SERVE_ENABLE_HA_PROXY on the Ray containers"),
    "client_timeout_s": (MANIFESTS, "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S on the Ray containers"),
    "header_timeout_s": (REPLACED, "the cluster load balancer's request timeout: the pods run Ray's HAProxy config unchanged"),
    "upload_min_bytes_per_s": (USER_CONFIG, ""),
    "upload_grace_s": (USER_CONFIG, ""),
    "max_connections": (MANIFESTS, "RAY_SERVE_HAPROXY_MAXCONN on the Ray containers"),
    "max_connections_per_source": (REPLACED, "the cluster load balancer's per-client limits (every client arrives from it)"),
    "access_log": (USER_CONFIG, ""),
    "coalesce": (USER_CONFIG, ""),
    "coalesce_scope": (MANIFESTS, "cluster: the tiergate-coalescer Serve deployment and the application's args"),
    "coalescer_replicas": (MANIFESTS, "the coalescer's Serve autoscaling floor and the Ray worker group's size"),
    "auth": (USER_CONFIG, ""),
    "auth.keys": (USER_CONFIG, "hashes only, never a key"),
    "auth.keys.*.name": (USER_CONFIG, ""),
    "auth.keys.*.sha256": (USER_CONFIG, ""),
    "auth.keys.*.tiers": (USER_CONFIG, ""),
    "auth.keys.*.default_tier": (USER_CONFIG, ""),
    "auth.keys_file": (REFUSED, "names a file on this machine that no pod has: use auth.keys"),
    "auth.keys_env": (REFUSED, "no Ray pod sets that variable: use auth.keys"),
    "shadows": (USER_CONFIG, ""),
    "shadow_log": (REPLACED, "an emptyDir on each Ray worker pod (/tmp/tiergate-shadow)"),
    "shadow_log_max_rows": (USER_CONFIG, ""),
    "models": (MANIFESTS, "user_config; the MARs each pool Deployment loads"),
    "models.*.profile": (USER_CONFIG, ""),
    "models.*.version": (MANIFESTS, "user_config; the version each pool's TorchServe registers the model under"),
    "models.*.max_body_bytes": (MANIFESTS, "user_config; the auth proxy's client_max_body_size of pools serving it"),
    "models.*.coalesce": (USER_CONFIG, ""),
    "models.*.cache": (USER_CONFIG, ""),
    "models.*.cache.ttl_s": (USER_CONFIG, ""),
    "models.*.cache.max_bytes": (USER_CONFIG, ""),
    "models.*.build": (BUILD, "the recipe whose MARs the pool images copy"),
    "models.*.mar": (MANIFESTS, "the MAR each pool's TorchServe loads; refused on a gpu pool unless named *-gpu.mar"),
    "models.*.inputs": (USER_CONFIG, ""),
    "models.*.outputs": (USER_CONFIG, ""),
    "models.*.max_batch": (USER_CONFIG, ""),
    "models.*.json_schema": (USER_CONFIG, ""),
    "models.*.content_types": (USER_CONFIG, ""),
    "pools": (MANIFESTS, "per pool a ConfigMap, Deployment, Service, PodDisruptionBudget and ScaledObject"),
    "pools.*.url": (REPLACED, "the pool's Service"),
    "pools.*.models": (MANIFESTS, "user_config; the MARs the pool's TorchServe loads"),
    "pools.*.metrics_url": (REPLACED, "the pool's Service, metrics port"),
    "pools.*.auth_token_file": (REPLACED, "the tiergate-pool-token Secret, mounted on the Ray workers"),
    "pools.*.management_url": (REPLACED, "none: the gateway holds no management key in the cluster; readiness reads the ping"),
    "pools.*.management_token_file": (REPLACED, "none (see management_url)"),
    "pools.*.max_concurrency": (MANIFESTS, "user_config; the gateway's Serve target_ongoing_requests"),
    "pools.*.max_queue": (USER_CONFIG, ""),
    "pools.*.reserve": (USER_CONFIG, ""),
    "pools.*.connect_timeout_s": (USER_CONFIG, ""),
    "pools.*.breaker_failures": (USER_CONFIG, ""),
    "pools.*.breaker_open_s": (USER_CONFIG, ""),
    "pools.*.breaker_error_rate": (USER_CONFIG, ""),
    "pools.*.breaker_window": (USER_CONFIG, ""),
    "pools.*.breaker_min_timeout_s": (USER_CONFIG, ""),
    "pools.*.local": (MANIFESTS, "required: the pool's Deployment is rendered from it"),
    "pools.*.local.variant": (MANIFESTS, "the pool image, resources, scaling bounds and the gpu overlay"),
    "pools.*.local.inference_port": (MANIFESTS, "the auth proxy's port, the Service, the in-cluster URL"),
    "pools.*.local.management_port": (MANIFESTS, "TorchServe's management_address, the Service"),
    "pools.*.local.metrics_port": (MANIFESTS, "TorchServe's metrics_address, the Service, the metrics URL"),
    "pools.*.local.workers": (MANIFESTS, "TorchServe's workers, the container's CPU and memory, the KEDA threshold"),
    "pools.*.local.threads": (MANIFESTS, "OMP_NUM_THREADS and MKL_NUM_THREADS of the TorchServe container"),
    "pools.*.local.batch_size": (MANIFESTS, "TorchServe's batchSize, the KEDA threshold"),
    "pools.*.local.max_batch_delay_ms": (MANIFESTS, "TorchServe's maxBatchDelay"),
    "pools.*.local.queue_size": (MANIFESTS, "TorchServe's job_queue_size"),
    "pools.*.local.java_heap_mb": (MANIFESTS, "TorchServe's vmargs -Xmx"),
    "pools.*.local.token_auth": (REPLACED, "always on in the pods: the auth proxy presents TorchServe's key"),
    "tiers": (USER_CONFIG, ""),
    "tiers.*.pools": (USER_CONFIG, ""),
    "tiers.*.spillover": (USER_CONFIG, ""),
    "tiers.*.priority": (USER_CONFIG, ""),
    "tiers.*.deadline_ms": (MANIFESTS, "user_config; Serve's request timeout, graceful shutdowns, the auth proxy's timeouts, HAProxy's replica timeout (RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S)"),
    "tiers.*.sheddable": (USER_CONFIG, ""),
    "tiers.*.attempt_timeout_ms": (USER_CONFIG, ""),
}
# Lists of models whose every field is carried whole with their parent.
CARRIED_WHOLE = ("shadows.*", "models.*.inputs.*", "models.*.outputs.*")


def decision(path: str) -> tuple[str, str] | None:
    """The decision for a setting's path, also for fields under a list carried whole."""
    if path in DECISIONS:
        return DECISIONS[path]
    if any(path.startswith(prefix + ".") for prefix in CARRIED_WHOLE):
        return (USER_CONFIG, "")
    if path.startswith("models.*.build."):  # the model source, its quantization and gates
        return (BUILD, "how `tiergate build-models` makes the MARs the pool images copy")
    return None


def refuse(config: GatewayConfig) -> None:
    """Raise RenderError naming the first setting the cluster cannot honour."""
    if config.artifacts_dir != Path("artifacts"):
        raise RenderError(
            f"artifacts_dir: {str(config.artifacts_dir)!r} cannot reach the cluster: the pool images copy"
            " artifacts/model-store (k8s/images/pool-*.Dockerfile); build the MARs there"
        )
    if config.auth.keys_file is not None:
        raise RenderError("auth.keys_file: names a file on this machine that no pod has; list the keys' hashes in auth.keys")
    if config.auth.keys_env is not None:
        raise RenderError("auth.keys_env: no Ray pod sets that variable; list the keys' hashes in auth.keys")
    for pool_name, pool in config.pools.items():
        if pool.local is None or pool.local.variant != "gpu":
            continue
        for model in config.pool_models(pool_name):
            mar = config.models[model].mar
            if mar is not None and not mar.endswith("-gpu.mar"):
                raise RenderError(
                    f"models.{model}.mar: {mar!r} is served by gpu pool {pool_name!r}, but the pool-gpu image"
                    " carries only *-gpu.mar files (k8s/images/pool-gpu.Dockerfile)"
                )
