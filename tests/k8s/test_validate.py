"""The assembled overlays pass the validators a cluster would apply, as far as this machine has them.

Built-in kinds: kubernetes-validate --strict (Kubernetes's own OpenAPI schemas, offline).
Custom resources: the vendored upstream CRD schemas, with unknown fields refused as the
API server's strict field validation would. Policy: checkov. Rules: promtool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import K8S, OVERLAYS, REPO, find, one

# The oldest release these manifests are meant for (PodDisruptionBudget policy/v1, the
# preStop sleep action, restricted Pod Security); and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
CRDS = K8S / "vendor" / "crds"
TOOLS_VENV = REPO / ".venv-tools"


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict(schema: Any) -> Any:
    """Refuse fields the schema does not name, where the API server would prune or reject them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def is_custom(document: dict[str, Any]) -> bool:
    return "." in document["apiVersion"].split("/")[0] and not document["apiVersion"].startswith(
        ("apps/", "policy/", "networking.k8s.io/", "autoscaling/", "rbac.authorization.k8s.io/")
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_pass_kubernetes_validate_strict(documents, version, tmp_path):
    builtin = [d for d in documents if not is_custom(d)]
    manifest = tmp_path / "builtin.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", version, str(manifest)],
        capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # It exits 0 on a kind it has no schema for; here that is a failure.
    assert "WARN" not in output and "ERROR" not in output, output
    assert output.count(" passed for resource ") == len(builtin), output


def test_custom_resources_match_the_vendored_crds(documents):
    schemas = crd_schemas()
    custom = [d for d in documents if is_custom(d)]
    assert {d["kind"] for d in custom} == {"RayService", "ScaledObject", "PodMonitor", "ServiceMonitor", "PrometheusRule"}
    for document in custom:
        schema = schemas.get((document["apiVersion"], document["kind"]))
        assert schema, f"no vendored CRD for {document['apiVersion']} {document['kind']}"
        errors = sorted(
            jsonschema.Draft7Validator(strict(schema)).iter_errors(document), key=lambda e: list(e.path)
        )
        assert not errors, "\n".join(
            f"{document['kind']}/{document['metadata']['name']} {'.'.join(map(str, e.path))}: {e.message}"
            for e in errors[:10]
        )


def test_strict_crd_check_catches_a_misspelt_field(built):
    """The CRD check must fail on a typo, or it proves nothing."""
    ray_service = json.loads(json.dumps(one(built["gpu"], "RayService")))
    ray_service["spec"]["rayClusterConfig"]["authOptions"]["secretname"] = "typo"
    schema = strict(crd_schemas()[("ray.io/v1", "RayService")])
    assert list(jsonschema.Draft7Validator(schema).iter_errors(ray_service))


def test_kustomize_lite_matches_kubectl(built, overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the overlays were assembled by tests/k8s/kustomize.py only")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    real = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    lite = {(d["kind"], d["metadata"]["name"]): d for d in built[overlay]}
    assert real == lite


def test_checkov_finds_nothing_unjustified(built, tmp_path):
    checkov = TOOLS_VENV / "bin" / "checkov"
    if not checkov.exists():
        pytest.skip(
            f"{checkov} missing: python -m venv .venv-tools && "
            ".venv-tools/bin/pip install -r k8s/tools-requirements.txt"
        )
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for overlay in OVERLAYS:
        (manifests / f"{overlay}.yaml").write_text(yaml.safe_dump_all(built[overlay]))
    for directory, framework in ((manifests, "kubernetes"), (K8S / "images", "dockerfile")):
        result = subprocess.run(
            [str(checkov), "--directory", str(directory), "--framework", framework, "--output", "json",
             "--quiet", "--skip-download"],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        )
        report = json.loads(result.stdout)
        assert isinstance(report, dict), f"checkov found nothing to check in {directory}"
        failed = report["results"]["failed_checks"]
        assert not failed, "\n".join(f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in failed)
        assert report["summary"]["passed"] > 50, f"checkov checked almost nothing in {directory}"


def test_promtool_accepts_the_rules_and_the_burn_alerts_fire(documents, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(one(documents, "PrometheusRule")["spec"]))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    # Premium answers 5% 5xx (50x its 0.1% budget) for 90 minutes; standard is healthy.
    series = 'tiergate_requests_total{{namespace="tiergate",tier="{tier}",pool="p",model="m",code="{code}",backend="b"}}'
    duration = 'tiergate_request_duration_seconds_{kind}{{namespace="tiergate",tier="premium",pool="p",model="m",code="200"{le}}}'
    unit = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": series.format(tier="premium", code="200"), "values": "0+95x90"},
                {"series": series.format(tier="premium", code="502"), "values": "0+5x90"},
                {"series": series.format(tier="standard", code="200"), "values": "0+100x90"},
                # All fast: no latency alert may fire alongside.
                {"series": duration.format(kind="bucket", le=',le="0.25"'), "values": "0+95x90"},
                {"series": duration.format(kind="count", le=""), "values": "0+95x90"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "80m",
                    "alertname": "TiergateAvailabilityBudgetBurn",
                    "exp_alerts": [
                        {"exp_labels": {"severity": "page", "tier": "premium", "slo": "availability", "namespace": "tiergate"},
                         "exp_annotations": _annotations(documents, "availability", "premium", "page")},
                        {"exp_labels": {"severity": "ticket", "tier": "premium", "slo": "availability", "namespace": "tiergate"},
                         "exp_annotations": _annotations(documents, "availability", "premium", "ticket")},
                    ],
                },
                {"eval_time": "80m", "alertname": "TiergateLatencyBudgetBurn", "exp_alerts": []},
            ],
            "promql_expr_test": [{
                "expr": 'tiergate:availability_errors:ratio_rate1h{tier="standard"}',
                "eval_time": "80m",
                "exp_samples": [{"labels": 'tiergate:availability_errors:ratio_rate1h{namespace="tiergate",tier="standard"}', "value": 0}],
            }],
        }],
    }
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump(unit))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _annotations(documents, sli: str, tier: str, severity: str) -> dict[str, str]:
    for group in one(documents, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            labels = rule.get("labels", {})
            if rule.get("alert") and labels.get("slo") == sli and labels.get("tier") == tier and labels.get("severity") == severity:
                return rule["annotations"]
    raise LookupError((sli, tier, severity))


def test_auth_proxy_nginx_config_is_valid(documents, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx not installed (Debian: apt-get install nginx)")
    for config_map in find(documents, "ConfigMap"):
        template = config_map["data"].get("auth-proxy.conf.template")
        if template is None:
            continue
        conf = tmp_path / f"{config_map['metadata']['name']}.conf"
        conf.write_text(
            template.replace("${POOL_TOKEN}", "pool-token").replace("${TORCHSERVE_INFERENCE_KEY}", "ts-key")
            .replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
        )
        result = subprocess.run([nginx, "-t", "-q", "-c", str(conf), "-p", str(tmp_path)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    start = one(documents, "ConfigMap", "tiergate-auth-proxy")["data"]["start.sh"]
    assert "envsubst '${POOL_TOKEN} ${TORCHSERVE_INFERENCE_KEY}'" in start
