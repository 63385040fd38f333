"""Cluster settings come from their own file, and cluster-scope coalescing renders its own
Serve deployment."""

from __future__ import annotations

import math

import pytest
import yaml

from gateway.cli import main as cli
from gateway.config import ConfigError, parse_config
from gateway.k8s_render import ClusterSettings, render
from gateway.k8s_render.settings import (
    default_cluster_file,
    load_cluster_settings,
    parse_cluster_settings,
)

from .conftest import REPO


def documents(files: dict[str, str]) -> list[dict]:
    return [doc for text in files.values() for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    (found,) = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def bundled_config(**changes):
    data = yaml.safe_load((REPO / "gateway" / "tiergate.yaml").read_text())
    data.update(changes)
    return parse_config(data)


def test_the_bundled_cluster_file_states_the_defaults():
    assert load_cluster_settings(default_cluster_file()) == ClusterSettings()
    assert load_cluster_settings(default_cluster_file()).model_fields_set >= set(ClusterSettings.model_fields) - {"image_tag"}


def test_namespace_images_scaling_and_slos_come_from_the_cluster_file(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({
        "namespace": "inference",
        "image_registry": "registry.example/ml",
        "image_tag": "2026.11",
        "gateway_max_replicas": 12,
        "pool_scaling": {"int8": {"min_replicas": 3, "max_replicas": 20}},
        "slo": {"premium": {"availability": 0.9995, "latency_threshold_s": 0.5, "latency": 0.995}},
        "default_slo": {"availability": 0.9, "latency_threshold_s": 5.0, "latency": 0.9},
    }))
    config = bundled_config()
    docs = documents(render(config, load_cluster_settings(cluster)))
    assert one(docs, "Namespace")["metadata"]["name"] == "inference"
    kustomization = yaml.safe_load(render(config, load_cluster_settings(cluster))["base/kustomization.yaml"])
    assert kustomization["namespace"] == "inference"
    serve = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    gateway = serve["applications"][0]["deployments"][0]
    assert gateway["autoscaling_config"]["max_replicas"] == 12
    assert parse_config(gateway["user_config"]).pools["cpu"].url.startswith("http://tiergate-pool-cpu.inference.svc")
    pool = one(docs, "Deployment", "tiergate-pool-cpu")["spec"]["template"]["spec"]["containers"][0]
    assert pool["image"] == "registry.example/ml/pool-cpu:2026.11"
    scaled = one(docs, "ScaledObject", "tiergate-pool-cpu")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (3, 20)
    assert 'namespace="inference"' in scaled["triggers"][0]["metadata"]["query"]
    assert one(docs, "ScaledObject", "tiergate-pool-gpu")["spec"]["maxReplicaCount"] == 4  # the default stays
    alerts = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"] if "alert" in r]
    premium = [a for a in alerts if a["labels"]["tier"] == "premium" and a["labels"]["slo"] == "availability"]
    assert "0.0072" in premium[0]["expr"]  # 14.4 x the 0.05% budget
    # Tiers the file does not name take default_slo.
    batch_ratio = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]
                   if r.get("record") == "tiergate:latency_errors:ratio_rate5m" and r["labels"]["tier"] == "batch"]
    assert 'le="5.0"' in batch_ratio[0]["expr"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"namespace": "Not_A_Name"}, "namespace"),
        ({"pool_scaling": {"gpu": {"min_replicas": 5, "max_replicas": 2}}}, "pool_scaling.gpu"),
        ({"slo": {"premium": {"availability": 1.5, "latency_threshold_s": 0.25, "latency": 0.99}}}, "slo.premium.availability"),
        ({"prometheus_url": "prometheus:9090"}, "prometheus_url"),
        ({"replicas": 3}, "replicas"),  # a gateway setting in the wrong file
    ],
)
def test_bad_cluster_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(ConfigError, match=message):
        parse_cluster_settings(settings, "cluster.yaml")


def test_check_config_validates_both_files(tmp_path, capsys):
    gateway_file, cluster_file = REPO / "gateway" / "tiergate.yaml", default_cluster_file()
    assert cli(["check-config", str(gateway_file), "--cluster", str(cluster_file)]) == 0
    assert "namespace tiergate" in capsys.readouterr().out
    bad = tmp_path / "cluster.yaml"
    bad.write_text("gateway_max_replicas: 0\n")
    assert cli(["check-config", str(gateway_file), "--cluster", str(bad)]) == 1
    assert "gateway_max_replicas" in capsys.readouterr().err


def test_cluster_scope_coalescing_renders_the_coalescer_deployment():
    from ray.serve.schema import ServeDeploySchema

    from gateway.app import Gateway
    from gateway.cluster_coalescer import Coalescer

    config = bundled_config(coalesce_scope="cluster", coalescer_replicas=3)
    settings = ClusterSettings()
    ray_service = one(documents(render(config, settings)), "RayService")
    serve = yaml.safe_load(ray_service["spec"]["serveConfigV2"])
    (app,) = ServeDeploySchema.model_validate(serve).applications
    # app_builder binds Gateway.bind(Coalescer.bind()) for these args.
    assert app.args == {"coalesce_scope": "cluster"}
    gateway, coalescer = serve["applications"][0]["deployments"]
    assert (gateway["name"], coalescer["name"]) == (Gateway.name, Coalescer.name)
    assert coalescer["user_config"] == gateway["user_config"]
    assert coalescer["autoscaling_config"]["min_replicas"] == 3
    assert coalescer["autoscaling_config"]["max_replicas"] == settings.coalescer_max_replicas
    same_knobs = {key for key in gateway["autoscaling_config"] if key not in ("min_replicas", "initial_replicas", "max_replicas")}
    assert all(coalescer["autoscaling_config"][key] == gateway["autoscaling_config"][key] for key in same_knobs)
    # The worker group has room for both deployments' replicas.
    group = ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    cpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    needed = (config.replicas * gateway["ray_actor_options"]["num_cpus"]
              + 3 * coalescer["ray_actor_options"]["num_cpus"])
    assert group["minReplicas"] == math.ceil(needed / cpus)


def test_replica_scope_renders_the_gateway_alone():
    serve = yaml.safe_load(one(documents(render(bundled_config())), "RayService")["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"] == {}
    assert [d["name"] for d in serve["applications"][0]["deployments"]] == ["tiergate"]
