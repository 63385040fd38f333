"""The one typed configuration of a tiergate deployment, loaded from one YAML file.

Everything the gateway does is decided here: which tiers exist, which pools serve
them and in what order, and the limits that protect the pools. The same file drives
the local stack (`tiergate up`) and the Kubernetes manifests (`tiergate render-k8s`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .model_config import NAME, ModelConfig, Strict


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and each bad field."""


class LocalLaunch(Strict):
    """How `tiergate up` starts this pool as a local TorchServe process."""

    variant: Literal["int8", "gpu", "fp32"]
    inference_port: int = Field(ge=1, le=65535)
    management_port: int = Field(ge=1, le=65535)
    metrics_port: int = Field(ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=16)
    threads: int = Field(
        default=1, ge=1, le=64, description="torch intra-op threads per worker (OMP_NUM_THREADS)"
    )
    batch_size: int = Field(default=1, ge=1, le=256)
    max_batch_delay_ms: int = Field(default=5, ge=0, le=10_000)
    queue_size: int = Field(default=64, ge=1)
    java_heap_mb: int = Field(
        default=512, ge=128,
        description="TorchServe frontend's JVM heap cap (else the JVM takes a quarter of the machine's memory)",
    )
    token_auth: bool = Field(
        default=True,
        description="TorchServe's token auth (its keys in the pool's workdir; the gateway presents the inference"
        " key); off only for benchmarks that put other proxies straight in front of the pool",
    )


class PoolConfig(Strict):
    """A TorchServe pool the gateway sends inference to."""

    url: str = Field(description="inference API base URL, e.g. http://127.0.0.1:8080")
    models: list[str] | None = Field(
        default=None, description="the models this pool serves (loads the MARs of); absent: every model"
    )
    metrics_url: str | None = Field(default=None, description="TorchServe metrics endpoint")
    auth_token_file: Path | None = Field(
        default=None, description="file holding TorchServe's inference token (production)"
    )
    management_url: str | None = Field(
        default=None,
        description="TorchServe's management API: where set, readiness asks it (describe, read-only) that each"
        " model has a READY worker; TorchServe's ping does not see a model short of workers. The local stack sets it",
    )
    management_token_file: Path | None = Field(default=None, description="file holding TorchServe's management key")
    max_concurrency: int = Field(
        default=8, ge=1, description="calls in flight to this pool, shared by all gateway replicas"
    )
    max_queue: int = Field(default=32, ge=0, description="calls waiting for a slot, per replica")
    reserve: int = Field(
        default=0, ge=0, description="slots spillover traffic may not take (kept for the pool's own tiers); divided among replicas like max_concurrency"
    )
    connect_timeout_s: float = Field(default=1.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open the breaker")
    breaker_open_s: float = Field(default=5.0, gt=0, description="how long an open breaker rejects calls")
    breaker_error_rate: float | None = Field(
        default=0.5, gt=0, le=1, description="share of the last breaker_window calls failing that opens the breaker"
    )
    breaker_window: int = Field(default=20, ge=2, description="calls the error rate is taken over")
    breaker_min_timeout_s: float = Field(
        default=1.0, ge=0,
        description="a call that times out counts against the breaker only if it had this long to run "
        "(shorter: its tier's deadline was tight, not the pool sick)",
    )
    local: LocalLaunch | None = None

    @field_validator("url", "metrics_url", "management_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/") if value else value


class TierConfig(Strict):
    """An SLA tier: where its traffic goes and how long it may take."""

    pools: list[str] = Field(
        min_length=1, description="primary first; later pools take over when earlier ones are down"
    )
    spillover: list[str] = Field(
        default_factory=list,
        description="pools that take a call instead of queueing it when the pool it was headed for is full, within their headroom beyond `reserve`",
    )
    priority: int = Field(default=0, description="higher is served first under overload")
    deadline_ms: int = Field(default=10_000, ge=1, le=600_000)
    attempt_timeout_ms: int | None = Field(
        default=None, ge=1,
        description="longest a call may wait on one pool while a later pool of `pools` could still take it "
        "over (Envoy's per_try_timeout); the last pool gets all the time left. Default: the deadline shared "
        "equally among `pools`, so a pool that hangs leaves the others time to answer",
    )
    sheddable: bool = Field(default=True, description="may be refused with 429 to protect higher tiers")


class ShadowCompare(Strict):
    """How a shadow's answer is compared with the primary's; the model's profile uses the
    settings that fit its answers (top-k for classifiers, atol/rtol/cosine for numbers)."""

    top_k: int = Field(default=5, ge=1, le=100)
    tolerance: float = Field(default=0.05, ge=0, le=1, description="max |Δprobability| counted as agreeing")
    atol: float = Field(default=1e-3, ge=0, description="tensors and JSON numbers: absolute tolerance")
    rtol: float = Field(default=1e-2, ge=0, description="tensors and JSON numbers: relative tolerance")
    min_cosine: float = Field(default=0.99, ge=-1, le=1, description="tensors: cosine similarity counted as agreeing")


class ShadowTest(Strict):
    """Mirror sampled traffic of one model to a candidate and compare the answers."""

    name: str = Field(pattern=NAME.pattern)
    model: str
    version: str | None = None
    tiers: list[str] = Field(default_factory=list, description="tiers sampled; empty means all")
    sample_rate: float = Field(ge=0, le=1)
    target_pool: str = Field(description="the pool serving the candidate")
    target_model: str | None = Field(default=None, description="model name at the target (default: model)")
    target_version: str | None = None
    max_concurrency: int = Field(default=4, ge=1, description="shadow calls in flight; beyond it samples drop")
    timeout_ms: int = Field(default=2000, ge=1, le=120_000)
    compare: ShadowCompare = Field(default_factory=ShadowCompare)
    noise_baseline: bool = Field(
        default=False, description="also send the sample to the primary again, to measure its own noise"
    )
    log_payloads: bool = Field(default=False, description="store request bodies of disagreements (off: never)")


class ApiKey(Strict):
    """One caller: its key's SHA-256 (`printf %s KEY | sha256sum`) and the tiers it may use."""

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tiers: list[str] = Field(min_length=1)
    default_tier: str | None = None

    @model_validator(mode="after")
    def _default_allowed(self) -> ApiKey:
        if self.default_tier is not None and self.default_tier not in self.tiers:
            raise ValueError(f"key {self.name!r}: default_tier {self.default_tier!r} is not in its tiers")
        return self


class AuthConfig(Strict):
    keys: list[ApiKey] = Field(default_factory=list)
    keys_file: Path | None = Field(default=None, description="YAML list of keys, same shape")
    keys_env: str | None = Field(default=None, description="env var holding such a YAML list")


class GatewayConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    tier_header: str = "X-SLA-Tier"
    default_tier: str = "standard"
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description="default body limit of every model")
    models: dict[str, ModelConfig] = Field(min_length=1, description="name → model, each with its profile")
    artifacts_dir: Path = Path("artifacts")
    replicas: int = Field(default=1, ge=1, le=64)
    ingress: Literal["haproxy", "proxy"] = Field(
        default="haproxy",
        description="haproxy: Ray Serve's HAProxy ingress straight to replicas (fast); proxy: Serve's Python proxy",
    )
    client_timeout_s: int = Field(
        default=60, ge=1, le=3600,
        description="how long the HAProxy ingress waits on a silent client (slow headers or body, idle"
        " keep-alive) before closing its connection; Ray's default is an hour",
    )
    header_timeout_s: int = Field(
        default=10, ge=1, le=300,
        description="HAProxy ingress: a request's head, and its body up to 16 KB, must arrive within this or"
        " HAProxy answers 408 before a replica sees it (`timeout http-request`: slowloris, slow bodies)",
    )
    upload_min_bytes_per_s: int = Field(
        default=16384, ge=0,
        description="after upload_grace_s, a body must keep arriving at least this fast on average, or 408 and"
        " its replica slot is freed (like NGINX's client_body_timeout, counting bytes); 0: only the tier's"
        " deadline bounds an upload",
    )
    upload_grace_s: float = Field(default=2.0, gt=0, le=60, description="how long a body may take before upload_min_bytes_per_s applies")
    max_connections: int = Field(
        default=6144, ge=64, le=65536,
        description="HAProxy ingress: client connections open at once (`maxconn`; Ray's default 4096); HAProxy"
        " needs twice as many file descriptors plus ~4,200 (`ulimit -Hn`)",
    )
    max_connections_per_source: int = Field(
        default=256, ge=1,
        description="HAProxy ingress: connections one client address may hold open; its next ones are refused",
    )
    access_log: bool = Field(default=True, description="one JSON line per request on stderr (no payloads)")
    coalesce: bool = Field(default=True, description="identical concurrent requests share one backend call")
    coalesce_scope: Literal["replica", "cluster"] = Field(
        default="replica",
        description="replica: within each gateway replica; cluster: identical requests from every replica"
        " meet on one coalescer replica (chosen by consistent hashing of the request key), one handle hop more",
    )
    coalescer_replicas: int = Field(default=2, ge=1, le=64, description="coalescer replicas when scope is cluster")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    shadows: list[ShadowTest] = Field(default_factory=list)
    shadow_log: Path = Field(default=Path(".tiergate/shadow.sqlite"), description="SQLite log: one compact row per compared sample, full top-k for disagreements")
    shadow_log_max_rows: int = Field(default=100_000, ge=1)
    pools: dict[str, PoolConfig] = Field(min_length=1)
    tiers: dict[str, TierConfig] = Field(min_length=1)

    @field_validator("tiers", "pools", "models")
    @classmethod
    def _keys_are_names(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for key in entries:
            if not NAME.match(key):
                raise ValueError(f"name {key!r} must match {NAME.pattern}")
        return entries

    @field_validator("tiers")
    @classmethod
    def _tiers_lower_case(cls, tiers: dict[str, Any]) -> dict[str, Any]:
        for name in tiers:
            if name != name.lower():  # the tier header is matched in lower case
                raise ValueError(f"tier name {name!r} must be lower case, e.g. {name.lower()!r}")
        return tiers

    @model_validator(mode="after")
    def _references_resolve(self) -> GatewayConfig:
        if self.default_tier not in self.tiers:
            raise ValueError(
                f"default_tier {self.default_tier!r} is not one of the tiers {sorted(self.tiers)}"
            )
        for tier_name, tier in self.tiers.items():
            for pool in tier.pools + tier.spillover:
                if pool not in self.pools:
                    raise ValueError(
                        f"tier {tier_name!r} names pool {pool!r}, not one of {sorted(self.pools)}"
                    )
            if len(set(tier.pools)) != len(tier.pools):
                raise ValueError(f"tier {tier_name!r} lists a pool twice: {tier.pools}")
        for pool_name, pool in self.pools.items():
            unknown = [model for model in pool.models or [] if model not in self.models]
            if unknown:
                raise ValueError(f"pool {pool_name!r} serves unknown models {unknown}, not among {sorted(self.models)}")
        for model in self.models:
            for tier_name, tier in self.tiers.items():
                if not self.tier_pools(tier_name, model):
                    serving = [name for name in self.pools if model in self.pool_models(name)]
                    raise ValueError(
                        f"model {model!r} has no pool in tier {tier_name!r}: the tier's pools {tier.pools} do not"
                        f" serve it (pools serving it: {serving or 'none'}); add one to the tier or the model to a pool's `models`"
                    )
        if self.coalesce_scope == "cluster" and not self.coalesce:
            raise ValueError("coalesce_scope: cluster needs coalesce: true")
        names = [shadow.name for shadow in self.shadows]
        if len(set(names)) != len(names):
            raise ValueError(f"shadow test names must be unique: {names}")
        for shadow in self.shadows:
            if shadow.model not in self.models:
                raise ValueError(f"shadow {shadow.name!r} watches model {shadow.model!r}, not one of {sorted(self.models)}")
            if shadow.target_pool not in self.pools:
                raise ValueError(f"shadow {shadow.name!r} targets pool {shadow.target_pool!r}, not one of {sorted(self.pools)}")
            unknown = set(shadow.tiers) - set(self.tiers)
            if unknown:
                raise ValueError(f"shadow {shadow.name!r} samples unknown tiers {sorted(unknown)}")
        for key in self.auth.keys:
            unknown = set(key.tiers) - set(self.tiers)
            if unknown:
                raise ValueError(f"API key {key.name!r} names unknown tiers {sorted(unknown)}")
        return self

    def pool_models(self, pool: str) -> list[str]:
        """The models a pool serves, in config order."""
        served = self.pools[pool].models
        return list(self.models) if served is None else [model for model in self.models if model in served]

    def tier_pools(self, tier: str, model: str) -> list[str]:
        """The tier's pools in order, kept to those serving the model."""
        return [pool for pool in self.tiers[tier].pools if model in self.pool_models(pool)]

    def tier_spillover(self, tier: str, model: str) -> list[str]:
        return [pool for pool in self.tiers[tier].spillover if model in self.pool_models(pool)]

    def body_limit(self, model: str) -> int:
        return self.models[model].max_body_bytes or self.max_body_bytes

    def digest(self) -> str:
        """Names this config's content: /readyz reports the one a replica runs, so a reload is
        confirmed when the replicas answer with the new one."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate a mapping (from YAML or Ray Serve's user_config) into a GatewayConfig."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
