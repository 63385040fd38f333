"""The kustomize overlays over base/: `gpu` puts gpu-variant pools on NVIDIA nodes, `cpu-only`
runs them on the CPU pool image instead."""

from __future__ import annotations

from typing import Any

from ..config import GatewayConfig
from .common import pools
from .output import kustomization
from .settings import ClusterSettings


def render(config: GatewayConfig, settings: ClusterSettings) -> dict[str, list[Any]]:
    """{path under k8s/: documents}: the overlays' kustomizations and patches."""
    gpu_pools = [pool for pool in pools(config) if pool.is_gpu]
    files: dict[str, list[Any]] = {}
    patches = []
    for pool in gpu_pools:
        patch_name = f"{pool.deployment}-accelerator.yaml"
        files[f"overlays/gpu/{patch_name}"] = [[
            {"op": "add", "path": "/spec/template/spec/containers/0/resources/requests/nvidia.com~1gpu", "value": "1"},
            {"op": "add", "path": "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu", "value": "1"},
            # Label set by NVIDIA's GPU feature discovery on nodes that have a GPU.
            {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"nvidia.com/gpu.present": "true"}},
            {"op": "add", "path": "/spec/template/spec/tolerations", "value": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]},
        ]]
        patches.append({"path": patch_name, "target": {"kind": "Deployment", "name": pool.deployment}})
    files["overlays/gpu/kustomization.yaml"] = [kustomization(resources=["../../base"], patches=patches)]
    # Without GPUs, the gpu-variant pools run their MAR's fp32 program on the CPU image;
    # the X-Tiergate-Backend header then says cpu-fp32, not tensorrt-fp16.
    registry = settings.image_registry
    images = [{"name": f"{registry}/pool-gpu", "newName": f"{registry}/pool-cpu"}] if gpu_pools else []
    files["overlays/cpu-only/kustomization.yaml"] = [kustomization(resources=["../../base"], images=images)]
    return files
