"""The rendered manifests say what the gateway config says, and the committed copy is current."""

from __future__ import annotations

import re

import pytest
import yaml

from gateway import k8s_render
from gateway.config import ConfigError, parse_config
from gateway.k8s_render import GENERATED, RenderError, main, render
from gateway.k8s_render.common import SECRETS_TO_CREATE
from gateway.k8s_render.settings import parse_cluster_settings

from .conftest import K8S, REPO, find, one, serve_config


def test_committed_manifests_are_current(rendered, tmp_path):
    gateway_dir = REPO / "gateway"
    main(["--config", str(gateway_dir / "tiergate.yaml"), "--cluster", str(gateway_dir / "cluster.yaml"), "--out", str(tmp_path)])
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.rglob("*.yaml")}
    committed = {
        p.relative_to(K8S).as_posix(): p.read_text()
        for subtree in ("base", "overlays")
        for p in (K8S / subtree).rglob("*.yaml")
    }
    assert fresh == rendered
    stale = sorted(path for path in set(fresh) | set(committed) if fresh.get(path) != committed.get(path))
    assert not stale, f"k8s/ is out of date for {stale}: run `make render-k8s`"


def test_write_replaces_only_generated_files(rendered, tmp_path):
    k8s_render.write(rendered, tmp_path)
    stale = tmp_path / "base" / "pool-removed.yaml"
    stale.write_text(GENERATED + "\nkind: Deployment\n")
    hand_written = tmp_path / "overlays" / "gpu" / "notes.yaml"
    hand_written.write_text("# kept\n")
    k8s_render.write(rendered, tmp_path)
    assert not stale.exists()
    assert hand_written.read_text() == "# kept\n"


def test_serve_config_parses_with_ray_and_carries_the_gateway_config(documents, config):
    from ray.serve.schema import ServeDeploySchema

    from gateway.app import Gateway

    schema = ServeDeploySchema.model_validate(serve_config(documents))
    (app,) = schema.applications
    assert app.import_path == "gateway.app:app_builder"
    (deployment,) = app.deployments
    assert deployment.name == Gateway.name
    assert deployment.autoscaling_config["min_replicas"] == config.replicas
    in_cluster = parse_config(deployment.user_config, "user_config")
    # The config travels only as user_config: a change reconfigures replicas, no redeploy.
    assert app.args == {}
    # Everything but where the pools are and how to reach them is the local stack's config.
    assert in_cluster.tiers == config.tiers
    assert in_cluster.models == config.models
    assert in_cluster.max_body_bytes == config.max_body_bytes
    assert schema.http_options.port == config.port
    assert schema.http_options.request_timeout_s > max(t.deadline_ms for t in config.tiers.values()) / 1000


def test_gateway_reaches_each_pool_through_its_service_with_the_pool_token(documents, config):
    user_config = parse_config(serve_config(documents)["applications"][0]["deployments"][0]["user_config"])
    worker = one(documents, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    token_mounts = {m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    for name, pool in user_config.pools.items():
        local = config.pools[name].local
        match = re.fullmatch(r"http://([a-z0-9-]+)\.tiergate\.svc\.cluster\.local:(\d+)", pool.url)
        assert match, pool.url
        service = one(documents, "Service", match.group(1))
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports == {
            "inference": local.inference_port,
            "management": local.management_port,
            "metrics": local.metrics_port,
        }
        assert int(match.group(2)) == local.inference_port
        assert pool.metrics_url.endswith(f":{local.metrics_port}/metrics")
        assert str(pool.auth_token_file.parent) in token_mounts
        assert pool.local is None
        assert service["metadata"]["namespace"] == "tiergate"


def test_shadow_log_is_on_a_volume_the_pods_replicas_share(documents):
    user_config = parse_config(serve_config(documents)["applications"][0]["deployments"][0]["user_config"])
    worker = one(documents, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in worker["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["volumes"]}
    volume = volumes[mounts[str(user_config.shadow_log.parent)]]
    assert "emptyDir" in volume and volume["emptyDir"]["sizeLimit"]


def test_torchserve_properties_come_from_the_pool_config(documents, config):
    for name, pool in config.pools.items():
        config_map = one(documents, "ConfigMap", f"tiergate-pool-{name}")
        properties = dict(
            line.split("=", 1)
            for line in config_map["data"]["config.properties"].splitlines()
            if line and not line.startswith("#")
        )
        launch = pool.local
        assert properties["disable_token_authorization"] == "false"
        assert properties["inference_address"].startswith("http://127.0.0.1:")
        assert properties["management_address"] == f"http://0.0.0.0:{launch.management_port}"
        assert properties["metrics_address"] == f"http://0.0.0.0:{launch.metrics_port}"
        assert properties["enable_model_api"] == "false"
        assert properties["metrics_mode"] == "prometheus"
        assert properties["job_queue_size"] == str(launch.queue_size)
        assert f"-Xmx{launch.java_heap_mb}m" in properties["vmargs"].split()
        models = yaml.safe_load(properties["models"])
        assert list(models) == config.pool_models(name)
        for model in config.pool_models(name):
            version = models[model]["1.0"]
            assert version["marName"] == (config.models[model].mar or f"{model}-{launch.variant}.mar")
            assert version["batchSize"] == launch.batch_size
            assert version["maxBatchDelay"] == launch.max_batch_delay_ms
            assert version["minWorkers"] == version["maxWorkers"] == launch.workers
        proxy_conf = config_map["data"]["auth-proxy.conf.template"]
        assert f"listen {launch.inference_port};" in proxy_conf
        assert properties["inference_address"].endswith(re.search(r"server (127\.0\.0\.1:\d+);", proxy_conf).group(1))


def test_pool_pods_are_locked_down(documents):
    for deployment in find(documents, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert "readinessProbe" in container and "livenessProbe" in container
            named_ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in named_ports
        assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"


def test_gpu_overlay_puts_gpu_pools_on_gpus_and_cpu_only_overlay_does_not(built, config):
    gpu_pools = {f"tiergate-pool-{n}" for n, p in config.pools.items() if p.local.variant == "gpu"}
    assert gpu_pools, "the bundled config has a GPU pool"
    for overlay, documents in built.items():
        for deployment in find(documents, "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            torchserve = pod["containers"][0]
            wants_gpu = overlay == "gpu" and deployment["metadata"]["name"] in gpu_pools
            assert (torchserve["resources"]["limits"].get("nvidia.com/gpu") == "1") is wants_gpu
            assert ("nodeSelector" in pod) is wants_gpu
            assert torchserve["image"].split(":")[0].endswith("pool-gpu") is wants_gpu


def test_ray_cluster_has_token_auth_probes_and_resources(documents):
    ray = one(documents, "RayService")["spec"]
    cluster = ray["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "tiergate-ray-auth"}
    assert ray["upgradeStrategy"]["type"] in {"NewCluster", "NewClusterWithIncrementalUpgrade"}
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]["value"] == "60"  # not Ray's hour
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "tiergate-ray-auth"
        assert container["readinessProbe"] and container["livenessProbe"]
        assert container["resources"]["requests"] == container["resources"]["limits"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_every_referenced_secret_is_documented_and_every_config_map_exists(documents):
    readme = (K8S / "README.md").read_text()
    secrets, config_maps = set(), set()

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                secrets.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            if "secret" in node and "secretName" in node["secret"]:
                secrets.add((node["secret"]["secretName"], None))
            if "configMap" in node:
                config_maps.add(node["configMap"]["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(documents)
    for name, key in secrets:
        assert name in SECRETS_TO_CREATE and key in (None, SECRETS_TO_CREATE[name])
    for name, key in SECRETS_TO_CREATE.items():
        assert f"create secret generic {name} --from-literal={key}=" in readme
    assert config_maps <= {d["metadata"]["name"] for d in find(documents, "ConfigMap")}


def test_network_policies_open_pool_ports_only_to_the_gateway_prometheus_and_operators(documents):
    policy = one(documents, "NetworkPolicy", "tiergate-pools")["spec"]
    by_port = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) == {"inference", "metrics", "management"}
    assert by_port["inference"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}]
    assert all("namespaceSelector" in peer for peer in by_port["metrics"] + by_port["management"])
    pool_ports = {
        p["name"]
        for d in find(documents, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert set(by_port) <= pool_ports
    ray_pod_labels = one(documents, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    assert by_port["inference"][0]["podSelector"]["matchLabels"].items() <= ray_pod_labels.items()


def test_pool_autoscaling_follows_the_gateway_inflight_metric(documents, config):
    from gateway.metrics import POOL_INFLIGHT

    for name, pool in config.pools.items():
        scaled = one(documents, "ScaledObject", f"tiergate-pool-{name}")["spec"]
        assert scaled["scaleTargetRef"]["name"] == f"tiergate-pool-{name}"
        (trigger,) = scaled["triggers"]
        assert trigger["metadata"]["query"] == f'sum({POOL_INFLIGHT._name}{{namespace="tiergate",pool="{name}"}})'
        assert int(trigger["metadata"]["threshold"]) == 2 * pool.local.workers * pool.local.batch_size
        assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def gateway_series() -> set[str]:
    """Every series name the gateway's /metrics can carry, from the metrics it defines."""
    from prometheus_client.metrics import MetricWrapperBase

    from gateway import metrics

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        family.name + suffix
        for metric in vars(metrics).values() if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
        for suffix in suffixes[family.type]
    }


def test_dashboard_queries_only_metrics_that_exist(documents):
    import json

    board = json.loads(one(documents, "ConfigMap", "tiergate-dashboard")["data"]["tiergate.json"])
    rules = one(documents, "PrometheusRule")["spec"]["groups"]
    recorded = {rule["record"] for group in rules for rule in group["rules"] if "record" in rule}
    scraped = gateway_series() | {"kube_deployment_status_replicas_ready", "ts_inference_requests_total",
                                  "ts_queue_latency_microseconds"}
    used = set()
    for panel in board["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b((?:tiergate:|tiergate_|kube_|ts_)[A-Za-z0-9_:]+)\b", target["expr"]))
    assert used and used <= recorded | scraped, used - recorded - scraped
    titles = " ".join(panel["title"] for panel in board["panels"])
    assert "p99" in titles and "Availability" in titles and "Pool load" in titles


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda data: data["pools"]["cpu"].pop("local"), "no `local` launch settings"),
        (lambda data: data["pools"].update(CPU=data["pools"]["cpu"]), "collide"),
        (lambda data: data["pools"]["cpu"]["local"].update(metrics_port=18080), "reserved"),
    ],
)
def test_configs_the_cluster_cannot_run_are_refused_with_the_reason(change, message):
    data = yaml.safe_load((REPO / "gateway" / "tiergate.yaml").read_text())
    change(data)
    with pytest.raises(RenderError, match=message):
        render(parse_config(data))


def test_slo_threshold_must_be_a_histogram_bucket():
    premium = {"availability": 0.999, "latency_threshold_s": 0.3, "latency": 0.99}
    with pytest.raises(ConfigError, match=r"slo\.premium\.latency_threshold_s: .*not a bucket bound"):
        parse_cluster_settings({"slo": {"premium": premium}})


def test_main_reports_a_bad_config_without_writing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: {}\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "out")]) == 1
    assert "invalid config" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_renderer_imports_no_process_code():
    """Shared values come from gateway/run_settings.py; the local supervisor and pool launcher stay out."""
    import subprocess
    import sys

    probe = (
        "import sys, gateway.k8s_render;"
        "print(sorted(m for m in ('gateway.stack', 'torchserve_backend.launcher', 'gateway.pool_keeper') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]", result.stdout
