"""Render the Kubernetes manifests (KubeRay RayService + TorchServe pools) from the gateway
config and the cluster settings.

The same YAML that drives the local stack decides the cluster (decisions.py says what becomes
of each setting); what only the cluster decides (namespace, images, scaling bounds, SLO
targets) comes from a cluster settings file (settings.py; gateway/cluster.yaml is the
bundled example). One module per resource family, each a function from (gateway config,
cluster settings) to {file name: documents}:

    tiergate render-k8s --config gateway/tiergate.yaml --cluster gateway/cluster.yaml --out k8s

writes `base/` and `overlays/{cpu-only,gpu}/` under `--out` (a kustomize tree); every file
carries the GENERATED header, and only such files are ever replaced or removed.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import ConfigError, GatewayConfig, load_config
from . import auth_proxy, autoscaling, dashboard, monitoring, network_policies, overlays, pools, ray_service
from .common import RenderError
from .common import pools as cluster_pools
from .decisions import refuse
from .output import GENERATED, dump_all, kustomization, write
from .settings import ClusterSettings, default_cluster_file, load_cluster_settings

__all__ = ["GENERATED", "ClusterSettings", "RenderError", "main", "render", "write"]

# In base/ file order; families adding to one file (pools, auth proxy, autoscaling) add in this order.
FAMILIES = (network_policies, ray_service, pools, auth_proxy, autoscaling, monitoring, dashboard)


def render(config: GatewayConfig, settings: ClusterSettings | None = None) -> dict[str, str]:
    """Every generated file of the kustomize tree, as {path relative to k8s/: text}."""
    settings = settings or ClusterSettings()
    refuse(config)
    cluster_pools(config)  # refuses pools no Deployment can be made of, before any family runs
    base: dict[str, list[Any]] = {}
    for family in FAMILIES:
        for name, documents in family.render(config, settings).items():
            base.setdefault(name, []).extend(documents)
    files = {f"base/{name}": dump_all(documents) for name, documents in base.items()}
    files["base/kustomization.yaml"] = dump_all([kustomization(resources=sorted(base), namespace=settings.namespace)])
    files.update({path: dump_all(documents) for path, documents in overlays.render(config, settings).items()})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tiergate render-k8s",
        description="Render the Kubernetes manifests (kustomize base + overlays) from a gateway config and cluster settings.",
    )
    parser.add_argument("--config", type=Path, default=None, help="gateway YAML (default: the bundled local stack)")
    parser.add_argument(
        "--cluster", type=Path, default=None, help="cluster settings YAML (default: the bundled gateway/cluster.yaml)"
    )
    parser.add_argument("--out", type=Path, default=Path("k8s"), help="kustomize root to write into")
    args = parser.parse_args(argv)
    config_path = args.config or Path(str(resources.files("gateway").joinpath("tiergate.yaml")))
    cluster_path = args.cluster or default_cluster_file()
    try:
        files = render(load_config(config_path), load_cluster_settings(cluster_path))
    except ConfigError as exc:
        print(f"tiergate render-k8s: {exc}", file=sys.stderr)
        return 1
    written = write(files, args.out)
    print(f"rendered {len(written)} files under {args.out} from {config_path} and {cluster_path}")
    return 0
