"""A real Prometheus scrapes the running stack: what it sees must match the traffic sent,
and the SLO rules shipped in k8s/ must load and evaluate."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from .conftest import REPO
from .images import distinct_pngs
from .waiting import wait_for

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL), reason="needs Debian's prometheus package (apt-get install prometheus)"
)
PROM_URL = "http://127.0.0.1:9090"
SENT = {"premium": 3, "standard": 5, "batch": 2}


def shipped_rules(fast_interval: str) -> dict:
    """The PrometheusRule groups from k8s/, evaluated every `fast_interval` for the test."""
    rule = yaml.safe_load((REPO / "k8s/base/slo-rules.yaml").read_text())
    groups = rule["spec"]["groups"]
    for group in groups:
        group["interval"] = fast_interval
    return {"groups": groups}


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prometheus")
    rules = workdir / "rules.yml"
    rules.write_text(yaml.safe_dump(shipped_rules("1s")))
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            "job_name": "tiergate",
            "static_configs": [{"targets": [stack.url.removeprefix("http://")], "labels": {"namespace": "local"}}],
        }],
    }))
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         "--web.listen-address=127.0.0.1:9090"],
        stdout=open(workdir / "prometheus.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _query_ok("up"), 60)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _query_ok(promql: str) -> bool:
    try:
        return httpx.get(f"{PROM_URL}/api/v1/query", params={"query": promql}, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def query(promql: str) -> list[dict]:
    response = httpx.get(f"{PROM_URL}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert response["status"] == "success", response
    return response["data"]["result"]


def by_tier(promql: str) -> dict[str, float]:
    return {series["metric"].get("tier"): float(series["value"][1]) for series in query(promql)}


def test_prometheus_sees_the_traffic_sent_per_tier_and_the_pool_series(stack, prometheus):
    served = 'sum by (tier) (tiergate_requests_total{code="200"})'
    wait_for(lambda: query('up{job="tiergate"} == 1'), 30)
    time.sleep(2)  # at least one full scrape before the baseline
    before = by_tier(served)
    bodies = iter(distinct_pngs(sum(SENT.values()), seed=99))
    with stack.client() as client:
        for tier, count in SENT.items():
            for _ in range(count):
                assert client.post("/predictions/resnet18", content=next(bodies), headers={"X-SLA-Tier": tier}).status_code == 200

    def counted() -> bool:
        after = by_tier(served)
        return all(after.get(tier, 0) - before.get(tier, 0) == count for tier, count in SENT.items())

    wait_for(counted, 30)
    # The pools' own series arrive through the same target, labelled by pool.
    pools = {series["metric"]["pool"] for series in query("ts_inference_requests_total")}
    assert pools == {"gpu", "cpu"}
    assert {s["metric"]["pool"]: float(s["value"][1]) for s in query("tiergate_pool_scrape_up")} == {"gpu": 1.0, "cpu": 1.0}
    # Every answer carried the real handler's X-Tiergate-Batch-Size, counted per pool.
    batches = {s["metric"]["pool"]: float(s["value"][1]) for s in query("sum by (pool) (tiergate_pool_batch_size_count)")}
    assert batches["gpu"] >= SENT["premium"] and batches["cpu"] >= SENT["standard"] + SENT["batch"]


def test_shipped_recording_rules_evaluate(stack, prometheus):
    # rate() needs the counter seen before an increase: more traffic now that it has been.
    with stack.client() as client:
        for body in distinct_pngs(2, seed=100):
            assert client.post("/predictions/resnet18", content=body, headers={"X-SLA-Tier": "premium"}).status_code == 200
    wait_for(lambda: query("tiergate:request_duration_seconds:p99_rate5m"), 60)
    quantiles = by_tier("tiergate:request_duration_seconds:p99_rate5m")
    assert {"premium", "standard"} <= set(quantiles)
    assert all(value > 0 for value in quantiles.values() if value == value)  # NaN-free where traffic was

    def premium_ratio() -> list[float]:
        value = by_tier("tiergate:availability_errors:ratio_rate5m").get("premium", float("nan"))
        return [value] if value == value else []  # NaN until the rule sees a rate

    # Every premium request above succeeded: the error ratio the alerts burn on is 0.
    assert wait_for(premium_ratio, 60) == [0.0]
