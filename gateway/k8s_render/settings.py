"""What the cluster decides and the gateway config does not: namespaces, images, scaling
bounds, SLO targets. One YAML file (the bundled example is gateway/cluster.yaml), validated
here, so a platform team changes them without touching Python."""

from __future__ import annotations

import re
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import ConfigError
from ..metrics import LATENCY_BUCKETS
from ..model_config import Strict

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class SloTarget(Strict):
    """One tier's objectives over a 30-day window."""

    availability: float = Field(gt=0, lt=1, description="share of requests not answered 5xx")
    latency_threshold_s: float = Field(
        gt=0, description="a bucket bound of tiergate_request_duration_seconds (gateway/metrics.py)"
    )
    latency: float = Field(gt=0, lt=1, description="share of successful requests answered within the threshold")

    @field_validator("latency_threshold_s")
    @classmethod
    def _bucket_bound(cls, threshold: float) -> float:
        # The ratio is read off the histogram: only a bucket bound can be counted exactly.
        if threshold not in LATENCY_BUCKETS:
            raise ValueError(
                f"{threshold}s is not a bucket bound of tiergate_request_duration_seconds {LATENCY_BUCKETS}"
            )
        return threshold


class PoolScaling(Strict):
    """Replica bounds of a pool Deployment (KEDA scales between them on the gateway's in-flight calls)."""

    min_replicas: int = Field(ge=1)
    max_replicas: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> PoolScaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class PoolScalingByVariant(Strict):
    """By pool variant: a GPU is scarce, a CPU replica is cheap."""

    gpu: PoolScaling = PoolScaling(min_replicas=1, max_replicas=4)
    int8: PoolScaling = PoolScaling(min_replicas=2, max_replicas=8)
    fp32: PoolScaling = PoolScaling(min_replicas=2, max_replicas=8)


def _default_slo() -> dict[str, SloTarget]:
    return {
        "premium": SloTarget(availability=0.999, latency_threshold_s=0.25, latency=0.99),
        "standard": SloTarget(availability=0.995, latency_threshold_s=1.0, latency=0.99),
        "batch": SloTarget(availability=0.99, latency_threshold_s=10.0, latency=0.95),
    }


class ClusterSettings(Strict):
    """The cluster's side of the manifests; every field has a default (gateway/cluster.yaml shows them)."""

    namespace: str = Field(default="tiergate", pattern=DNS_LABEL)
    image_registry: str = Field(default="tiergate", description="images are <registry>/{gateway,pool-cpu,pool-gpu}:<tag>")
    image_tag: str | None = Field(default=None, description="absent: the tiergate package version")
    auth_proxy_image: str = "nginxinc/nginx-unprivileged:1.29-alpine"
    ray_version: str = "2.60.0"
    monitoring_namespace: str = Field(default="monitoring", pattern=DNS_LABEL)
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    kuberay_namespace: str = Field(default="kuberay-system", pattern=DNS_LABEL)
    operators_namespace: str = Field(default="tiergate-ops", pattern=DNS_LABEL)
    gateway_max_replicas: int = Field(default=8, ge=1, le=256)
    coalescer_max_replicas: int = Field(default=8, ge=1, le=256, description="with coalesce_scope: cluster")
    pool_scaling: PoolScalingByVariant = Field(default_factory=PoolScalingByVariant)
    slo: dict[str, SloTarget] = Field(default_factory=_default_slo, description="tier → its SLO targets")
    default_slo: SloTarget = SloTarget(availability=0.99, latency_threshold_s=2.5, latency=0.95)

    @field_validator("prometheus_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value

    @property
    def tag(self) -> str:
        return self.image_tag or metadata.version("tiergate")

    def image(self, name: str) -> str:
        return f"{self.image_registry}/{name}:{self.tag}"

    def slo_for(self, tier: str) -> SloTarget:
        return self.slo.get(tier, self.default_slo)


def default_cluster_file() -> Path:
    return Path(str(resources.files("gateway").joinpath("cluster.yaml")))


def parse_cluster_settings(data: Any, source: str = "<cluster settings>") -> ClusterSettings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ClusterSettings.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{source}: invalid cluster settings\n" + "\n".join(lines)) from None


def load_cluster_settings(path: str | Path) -> ClusterSettings:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read cluster settings: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_cluster_settings(data, str(path))
