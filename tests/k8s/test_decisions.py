"""Every gateway setting reaches the cluster or is refused: the config model's fields are
walked, and each must have a decision (gateway/k8s_render/decisions.py) that holds."""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import GatewayConfig, parse_config
from gateway.k8s_render import RenderError, render
from gateway.k8s_render.decisions import (
    DECISIONS,
    MANIFESTS,
    REFUSED,
    REPLACED,
    USER_CONFIG,
    decision,
)

from .conftest import REPO


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The config models an annotation holds, and whether through a mapping or list (a `*` step)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (typing.Union, types.UnionType):
        found = [_models_in(arg) for arg in args]
        return [m for models, _ in found for m in models], any(many for _, many in found)
    if origin in (dict, list):
        models, _ = _models_in(args[-1])
        return models, True
    return [], False


def setting_paths(model: type[BaseModel] = GatewayConfig, prefix: str = "") -> set[str]:
    """Every field path of the config model: `a.b`, with `*` for any key or item."""
    paths = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        models, many = _models_in(field.annotation)
        for child in models:
            paths |= setting_paths(child, f"{path}.*." if many else f"{path}.")
    return paths


def test_every_setting_has_a_decision_and_every_decision_a_setting():
    paths = setting_paths()
    assert "pools.*.local.threads" in paths and "models.*.inputs.*.shape" in paths  # the walk goes deep
    undecided = sorted(path for path in paths if decision(path) is None)
    assert not undecided, f"decide in gateway/k8s_render/decisions.py what the cluster does with {undecided}"
    assert not set(DECISIONS) - paths, "decisions for settings that no longer exist"


def bundled() -> dict[str, Any]:
    return yaml.safe_load((REPO / "gateway" / "tiergate.yaml").read_text())


def rich() -> dict[str, Any]:
    """The bundled config plus the settings it leaves out, so that each is carried once."""
    data = bundled()
    data.update(access_log=False, shadow_log_max_rows=5000, tier_header="X-Tier")
    data["auth"] = {"keys": [{"name": "ops", "sha256": "0" * 64, "tiers": ["premium"], "default_tier": "premium"}]}
    data["shadows"] = [{"name": "gpu-vs-cpu", "model": "resnet18", "sample_rate": 0.1, "target_pool": "cpu",
                        "compare": {"top_k": 3}}]
    data["models"]["resnet18"]["cache"] = {"ttl_s": 5, "max_bytes": 1024}
    data["models"]["resnet18"]["coalesce"] = False
    data["pools"]["cpu"].update(max_queue=4, reserve=2, connect_timeout_s=0.5, breaker_failures=3, breaker_window=10)
    data["tiers"]["batch"]["spillover"] = ["gpu"]
    return data


def _user_config(files: dict[str, str]) -> dict[str, Any]:
    (ray_service,) = [d for d in yaml.safe_load_all(files["base/ray-service.yaml"]) if d["kind"] == "RayService"]
    return yaml.safe_load(ray_service["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]["user_config"]


def _leaves(data: Any, path: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in _leaves(value, f"{path}{key}.").items()}
    return {path.rstrip("."): data}


def test_settings_decided_user_config_arrive_unchanged():
    """Parsed back from the rendered user_config, every setting not replaced or refused
    equals the local one: nothing but the decided ones is lost on the way."""
    config = parse_config(rich())
    local = _leaves(config.model_dump(mode="json"))
    cluster = _leaves(parse_config(_user_config(render(config))).model_dump(mode="json"))
    changed = sorted(path for path in local if cluster.get(path) != local[path])
    for path in changed:
        pattern = ".".join("*" if part not in _FIELD_NAMES else part for part in path.split("."))
        # Only a replaced setting, or the pools' local launch (rendered into the pool's pods), differs.
        assert decision(pattern) == DECISIONS.get(pattern) and (
            DECISIONS[pattern][0] == REPLACED or pattern.startswith("pools.*.local.")
        ), path
    # What is replaced is replaced (the rest of `changed` is `local`, dropped in the cluster).
    assert {p.split(".")[-1] for p in changed} >= {"host", "shadow_log", "url", "metrics_url", "auth_token_file"}


def _field_names(model: type[BaseModel] = GatewayConfig) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for child in _models_in(field.annotation)[0]:
            names |= _field_names(child)
    return names


_FIELD_NAMES = _field_names()  # any other step of a path is a mapping key: `*`


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return change


def _cluster_scope(data: dict) -> None:
    data["coalesce_scope"] = "cluster"


def _drop_sentiment_from_gpu(data: dict) -> None:
    data["pools"]["gpu"]["models"].remove("sentiment")


def _add_model(data: dict) -> None:
    data["models"]["digits-v2"] = copy.deepcopy(data["models"]["digits"])
    data["pools"]["cpu"]["models"].append("digits-v2")


def _add_pool(data: dict) -> None:
    data["pools"]["fp32"] = {
        "url": "http://127.0.0.1:8100",
        "local": {"variant": "fp32", "inference_port": 8100, "management_port": 8101, "metrics_port": 8102},
    }


# A change of each MANIFESTS setting, and the config it is made on (default: the bundled one).
MANIFEST_CHANGES: dict[str, tuple[Callable[[dict], None] | None, Callable[[dict], None]]] = {
    "port": (None, _set("port", 8001)),
    "max_body_bytes": (None, _set("max_body_bytes", 9_000_000)),
    "replicas": (None, _set("replicas", 4)),
    "ingress": (None, _set("ingress", "proxy")),
    "client_timeout_s": (None, _set("client_timeout_s", 30)),
    "max_connections": (None, _set("max_connections", 8000)),
    "coalesce_scope": (None, _cluster_scope),
    "coalescer_replicas": (_cluster_scope, _set("coalescer_replicas", 6)),
    "models": (None, _add_model),
    "models.*.max_body_bytes": (None, _set("models.resnet18.max_body_bytes", 20_000_000)),
    "models.*.mar": (None, _set("models.digits.mar", "digits-custom-gpu.mar")),
    "models.*.version": (None, _set("models.digits.version", "2.0")),  # the version TorchServe registers
    "pools": (None, _add_pool),
    "pools.*.models": (None, _drop_sentiment_from_gpu),
    "pools.*.max_concurrency": (None, _set("pools.cpu.max_concurrency", 32)),
    "pools.*.local": (None, _set("pools.cpu.local.inference_port", 8095)),
    "pools.*.local.variant": (None, _set("pools.cpu.local.variant", "fp32")),
    "pools.*.local.inference_port": (None, _set("pools.cpu.local.inference_port", 8095)),
    "pools.*.local.management_port": (None, _set("pools.cpu.local.management_port", 8096)),
    "pools.*.local.metrics_port": (None, _set("pools.cpu.local.metrics_port", 8097)),
    "pools.*.local.workers": (None, _set("pools.cpu.local.workers", 2)),
    "pools.*.local.threads": (None, _set("pools.cpu.local.threads", 2)),
    "pools.*.local.batch_size": (None, _set("pools.cpu.local.batch_size", 4)),
    "pools.*.local.max_batch_delay_ms": (None, _set("pools.cpu.local.max_batch_delay_ms", 10)),
    "pools.*.local.queue_size": (None, _set("pools.cpu.local.queue_size", 32)),
    "pools.*.local.java_heap_mb": (None, _set("pools.cpu.local.java_heap_mb", 1024)),
    "tiers.*.deadline_ms": (None, _set("tiers.batch.deadline_ms", 60_000)),
}


def _without_user_config(files: dict[str, str]) -> dict[str, Any]:
    """The rendered tree with the gateway's user_config taken out of serveConfigV2."""
    documents = {}
    for path, text in files.items():
        docs = list(yaml.safe_load_all(text))
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "RayService":
                serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
                for deployment in serve["applications"][0]["deployments"]:
                    deployment.pop("user_config")
                doc["spec"]["serveConfigV2"] = serve
        documents[path] = docs
    return documents


def test_every_manifest_setting_changes_the_manifests_beyond_user_config():
    assert set(MANIFEST_CHANGES) == {path for path, (kind, _) in DECISIONS.items() if kind == MANIFESTS}
    for path, (prepare, change) in MANIFEST_CHANGES.items():
        data = bundled()
        if prepare:
            prepare(data)
        before = _without_user_config(render(parse_config(copy.deepcopy(data))))
        change(data)
        after = _without_user_config(render(parse_config(data)))
        assert before != after, f"{path} changed nothing but user_config"


REFUSALS = {
    "artifacts_dir": _set("artifacts_dir", "elsewhere"),
    "auth.keys_file": _set("auth.keys_file", "keys.yaml"),
    "auth.keys_env": _set("auth.keys_env", "TIERGATE_KEYS"),
    "models.*.mar": _set("models.digits.mar", "digits-custom.mar"),  # on the gpu pool: not in its image
    "pools.*.local": lambda data: data["pools"]["cpu"].pop("local"),
}


@pytest.mark.parametrize("path", sorted(REFUSALS))
def test_a_setting_the_cluster_cannot_honour_is_refused_by_name(path):
    assert {p for p, (kind, _) in DECISIONS.items() if kind == REFUSED} <= set(REFUSALS)
    data = bundled()
    REFUSALS[path](data)
    config = parse_config(data)
    named = path.replace("*", {"models.*.mar": "digits", "pools.*.local": "cpu"}.get(path, ""))
    with pytest.raises(RenderError, match=f"^{named.replace('.', chr(92) + '.')}: "):
        render(config)


def test_user_config_kinds_are_not_rendered_elsewhere_by_mistake():
    """A setting decided USER_CONFIG that in fact changes manifests should say so (MANIFESTS)."""
    data = rich()
    before = _without_user_config(render(parse_config(copy.deepcopy(data))))
    data["pools"]["cpu"]["max_queue"] = 5
    data["tiers"]["standard"]["priority"] = 3
    after = _without_user_config(render(parse_config(data)))
    assert before == after
    assert DECISIONS["pools.*.max_queue"][0] == DECISIONS["tiers.*.priority"][0] == USER_CONFIG
