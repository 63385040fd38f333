"""What the local stack and the cluster both run with: the Ray processes' environment and each
TorchServe pool's MARs and properties.

Pure values, no process code: the local supervisor (gateway/stack.py), the pool launcher
(torchserve_backend/launcher.py) and the manifest renderer (gateway/k8s_render/) import them
from here, so none of them imports another's process code and the two runs cannot drift.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from .config import GatewayConfig, LocalLaunch

# Ray Serve settings that cut the gateway's per-request cost, read from the environment of
# every Ray process: set before Ray starts, locally and in the KubeRay containers.
# Measured in BENCHMARKS.md, "Gateway overhead".
SERVE_TUNING_ENVIRONMENT = {
    # The gateway's code is async and never blocks its loop, so it runs on the replica's own
    # event loop instead of a second thread, saving two cross-thread hops a request.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # Otherwise HAProxy logs every request to a Python collector for Serve's HTTP metrics,
    # which tiergate's own /metrics already counts.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # Ray starts its workers at nice 15; the gateway replicas are the latency path.
    "RAY_worker_niceness": "0",
}
# Ray Serve's ingress runs admit.IngressHeaders first: no header a client sends can steer
# Ray Serve itself or make it answer a bare 500.
INGRESS_CALLBACK_ENVIRONMENT = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "gateway.admit:ingress_middlewares"}

# The Serve application, the same locally and on KubeRay: gateway/app.py builds it from these.
APPLICATION = "tiergate"
GATEWAY_DEPLOYMENT = "tiergate"  # the @serve.deployment names in gateway/app.py and cluster_coalescer.py
COALESCER_DEPLOYMENT = "tiergate-coalescer"


def serve_application(
    config: GatewayConfig, user_config: dict, gateway_options: dict, coalescer_options: dict
) -> dict:
    """The gateway as one entry of a Serve config's `applications`, deployed declaratively by
    the local stack and by KubeRay alike; each adds its own deployment options (replicas,
    autoscaling, CPUs).

    The config travels only as the deployments' `user_config`, and `args` carry just what
    decides the application's shape: Serve derives the code version from import path, args
    and runtime_env, so a changed config file is a `reconfigure` of the running replicas, and
    only a change of shape (coalesce_scope) starts new ones.
    """
    deployments = [{"name": GATEWAY_DEPLOYMENT, "user_config": user_config, **gateway_options}]
    args = {}
    if config.coalesce_scope == "cluster":
        args["coalesce_scope"] = "cluster"
        deployments.append({"name": COALESCER_DEPLOYMENT, "user_config": user_config, **coalescer_options})
    return {"name": APPLICATION, "route_prefix": "/", "import_path": "gateway.app:app_builder", "args": args, "deployments": deployments}


# TorchServe's own gRPC listeners: unused, but always bound, so each pool gets two ports above
# its inference port rather than TorchServe's fixed defaults (two pools would collide).
GRPC_INFERENCE_PORT_OFFSET = 3
GRPC_MANAGEMENT_PORT_OFFSET = 4
# The gateway enforces each model's body limit; the pool must never be the tighter one.
POOL_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MODEL_RESPONSE_TIMEOUT_S = 120
# TorchServe's keys expire (default 60 min) and cannot be supplied from outside; a key lives
# as long as the process that made it (10 years, still an int32 of seconds).
TORCHSERVE_TOKEN_EXPIRATION_MIN = 10 * 365 * 24 * 60


# How much longer than the longest tier deadline HAProxy waits on a silent replica: a replica
# answers every request by its deadline (504 at worst), so only a hung one is cut off.
REPLICA_TIMEOUT_MARGIN_S = 5


def replica_timeout_s(config: GatewayConfig) -> int:
    """HAProxy's `timeout server`: past it a client gets 504 from a hung (e.g. SIGSTOPped)
    replica instead of waiting forever (Ray sets none)."""
    return math.ceil(max(tier.deadline_ms for tier in config.tiers.values()) / 1000) + REPLICA_TIMEOUT_MARGIN_S


def ingress_settings(config: GatewayConfig) -> dict[str, str]:
    """What every Ray process of a gateway reads from its environment, here and on KubeRay."""
    return {
        **SERVE_TUNING_ENVIRONMENT,
        **INGRESS_CALLBACK_ENVIRONMENT,
        "RAY_SERVE_ENABLE_HA_PROXY": "1" if config.ingress == "haproxy" else "0",
        # A silent client holds one of HAProxy's connection slots this long at most.
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(config.client_timeout_s),
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(replica_timeout_s(config)),
        "RAY_SERVE_HAPROXY_MAXCONN": str(config.max_connections),
    }


def pool_launch(config: GatewayConfig, pool: str) -> LocalLaunch:
    launch = config.pools[pool].local
    if launch is None:
        raise ValueError(f"pool {pool!r} has no `local:` launch settings")
    return launch


def pool_mars(config: GatewayConfig, pool: str) -> dict[str, str]:
    """model → the MAR file the pool loads for it, for exactly the models it serves (config order):
    the model config's `mar:` if set, else the built <model>-<pool variant>.mar."""
    variant = pool_launch(config, pool).variant
    return {model: config.models[model].mar or f"{model}-{variant}.mar" for model in config.pool_models(pool)}


def pool_versions(config: GatewayConfig, pool: str) -> dict[str, str]:
    """model → the version its MAR declares (the model config's `version:`), which the pool registers."""
    return {model: config.models[model].version for model in config.pool_models(pool)}


def torchserve_properties(
    launch: LocalLaunch, mars: Mapping[str, str], versions: Mapping[str, str], model_store: str
) -> dict[str, str]:
    """One pool's TorchServe config.properties, as keys and values (the local stack's listeners:
    all on loopback, token auth as the launch says; the cluster overrides listeners and auth)."""
    models = {
        model: {
            versions[model]: {
                "defaultVersion": True,
                "marName": mar,
                "minWorkers": launch.workers,
                "maxWorkers": launch.workers,
                "batchSize": launch.batch_size,
                "maxBatchDelay": launch.max_batch_delay_ms,
                "responseTimeout": MODEL_RESPONSE_TIMEOUT_S,
            }
        }
        for model, mar in mars.items()
    }
    return {
        "inference_address": f"http://127.0.0.1:{launch.inference_port}",
        "management_address": f"http://127.0.0.1:{launch.management_port}",
        "metrics_address": f"http://127.0.0.1:{launch.metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(launch.inference_port + GRPC_INFERENCE_PORT_OFFSET),
        "grpc_management_port": str(launch.inference_port + GRPC_MANAGEMENT_PORT_OFFSET),
        "model_store": model_store,
        "load_models": ",".join(f"{model}={mar}" for model, mar in mars.items()),
        "models": json.dumps(models, separators=(",", ":")),
        "default_workers_per_model": str(launch.workers),
        "job_queue_size": str(launch.queue_size),
        "metrics_mode": "prometheus",
        "enable_model_api": "false",
        "disable_token_authorization": str(not launch.token_auth).lower(),
        "token_expiration_min": str(TORCHSERVE_TOKEN_EXPIRATION_MIN),
        "install_py_dep_per_model": "false",
        "default_response_timeout": str(MODEL_RESPONSE_TIMEOUT_S),
        "max_request_size": str(POOL_MAX_MESSAGE_BYTES),
        "max_response_size": str(POOL_MAX_MESSAGE_BYTES),
        # A fixed heap: the JVM's default (a quarter of the machine) lets the frontend's resident
        # memory creep for hours before collections start returning it. The gateway bounds what
        # a pool holds at once (max_concurrency bodies), so this is ample.
        "vmargs": f"-Xmx{launch.java_heap_mb}m -XX:+ExitOnOutOfMemoryError",
    }


def properties_text(properties: Mapping[str, str], header: str) -> str:
    """config.properties text: `header` (comment lines) then key=value lines."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + "".join(f"{key}={value}\n" for key, value in properties.items())
