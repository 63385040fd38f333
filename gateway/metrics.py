"""The gateway's Prometheus metrics.

Labels are bounded by the config (tiers, pools, models, backends) and the set of
HTTP status codes; nothing a client sends becomes a label value unchecked.
With several replicas in one pod, PROMETHEUS_MULTIPROC_DIR makes them share one view.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.parser import text_string_to_metric_families

# Inference latencies: from a ~1 ms cache hit to a 30 s batch deadline.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
UNKNOWN = "-"

REQUESTS = Counter(
    "tiergate_requests",
    "Inference requests answered, by tier, pool that served, model, status code and backend",
    ["tier", "pool", "model", "code", "backend"],
)
REFUSALS = Counter(
    "tiergate_refusals",
    "Requests refused before they reached the pipeline (auth, unknown model or path, bad input), by status and error type",
    ["code", "type"],
)
LATENCY = Histogram(
    "tiergate_request_duration_seconds",
    "End-to-end time in the gateway, from admission to the last response byte handed back",
    ["tier", "pool", "model", "code"],
    buckets=LATENCY_BUCKETS,
)
POOL_INFLIGHT = Gauge(
    "tiergate_pool_inflight",
    "Inference calls in flight to each pool",
    ["pool"],
    multiprocess_mode="livesum",
)
POOL_SLOTS = Gauge(
    "tiergate_pool_slots",
    "Calls the gateway may have in flight to each pool: the routing replicas' shares of max_concurrency",
    ["pool"],
    multiprocess_mode="livesum",
)
POOL_QUEUED = Gauge(
    "tiergate_pool_queued",
    "Calls waiting in the gateway for a slot on each pool",
    ["pool"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "tiergate_queue_wait_seconds",
    "Time a call waited in the gateway for a pool slot (only calls that waited)",
    ["tier", "pool"],
    buckets=LATENCY_BUCKETS,
)
SHED = Counter("tiergate_shed", "Calls refused (429/503) to protect higher tiers", ["tier", "pool"])
SPILLOVERS = Counter(
    "tiergate_spillovers", "Calls sent to a spillover pool because the tier's pool was full",
    ["tier", "from_pool", "to_pool"],
)
RETRIES = Counter(
    "tiergate_retries", "Calls handed to the next pool after one failed to take them",
    ["tier", "pool", "reason"],
)
BACKEND_CALLS = Counter("tiergate_backend_calls", "Inference calls sent to pools", ["pool"])
BACKEND_LATENCY = Histogram(
    "tiergate_backend_duration_seconds",
    "Time a pool took to answer an inference call (excludes time queued in the gateway)",
    ["pool"],
    buckets=LATENCY_BUCKETS,
)
POOL_BATCH_SIZE = Histogram(
    "tiergate_pool_batch_size",
    "Images in the handler call that answered (TorchServe's batch; its X-Tiergate-Batch-Size header)",
    ["pool"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
COALESCED = Counter(
    "tiergate_coalesced", "Requests answered by an identical concurrent request's backend call",
    ["tier", "model"],
)
CACHE = Counter("tiergate_cache_lookups", "Response cache lookups", ["model", "result"])
BREAKER_OPENED = Counter("tiergate_breaker_opened", "Times a pool's circuit breaker opened", ["pool"])
BREAKER_STATE = Gauge(
    "tiergate_breaker_state", "Circuit breaker per pool: 0 closed, 1 half-open, 2 open",
    ["pool"],
    multiprocess_mode="livemax",
)


# The local stack's supervisor, not one of the gateway's processes, writes its counters (pool
# restarts) as a Prometheus text file in the replicas' shared dir (gateway/pool_keeper.py).
SUPERVISOR_METRICS_FILE = "supervisor.prom"


class TextfileCollector:
    """The metrics of a Prometheus text file, as of the last time it was written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self):
        try:
            text = self.path.read_text()
        except FileNotFoundError:  # no local supervisor (KubeRay), or not written yet
            return
        yield from text_string_to_metric_families(text)


def render() -> tuple[bytes, str]:
    """The exposition text for /metrics, merged across replicas when they share a dir."""
    if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        forget_dead_processes(Path(directory))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(TextfileCollector(Path(directory) / SUPERVISOR_METRICS_FILE))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

def forget_dead_processes(directory: Path) -> None:
    """Drop the gauges of replicas that are gone (stopped, replaced, killed): prometheus_client's
    `live*` modes count a process until someone marks it dead, and nobody else does. Counters
    and histograms of dead replicas stay: what they counted happened. The replicas sharing the
    dir share a machine (a pod), so their pids are ours to check."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# Shadow tests (gateway/shadow.py), labelled by the shadow test's name from the config.
# `pair` is "candidate" (primary vs candidate) or "baseline" (primary vs itself, noise_baseline).
SHADOW_MIRRORED = Counter("tiergate_shadow_mirrored", "Sampled requests sent to a shadow test's target", ["shadow"])
SHADOW_DROPPED = Counter(
    "tiergate_shadow_dropped",
    "Sampled requests not mirrored: the test's shadow calls were all in flight (full) or its target is down",
    ["shadow", "reason"],
)
SHADOW_ERRORS = Counter(
    "tiergate_shadow_errors", "Shadow samples that could not be compared, by failing call and kind",
    ["shadow", "call", "kind"],
)
SHADOW_TOP1 = Counter(
    "tiergate_shadow_top1",
    "Compared samples by whether the decisive part agrees: the top-1 class (classifiers), cosine and shapes"
    " (tensors), every non-numeric value (JSON), the bytes (passthrough)",
    ["shadow", "pair", "result"],
)
SHADOW_OUTCOMES = Counter(
    "tiergate_shadow_outcomes", "Compared samples by verdict: agree, disagree (logged), noisy (primary disagrees with itself)",
    ["shadow", "outcome"],
)
SHADOW_OVERLAP = Histogram(
    "tiergate_shadow_topk_overlap", "Share of top-k classes (or of a document's paths) both answers list",
    ["shadow", "pair"], buckets=(0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 1.0),
)
SHADOW_MAX_DELTA = Histogram(
    "tiergate_shadow_max_abs_delta",
    "Largest |Δprobability| between the two answers' top-k classes (numbers: |Δ| beyond rtol·|primary|)",
    ["shadow", "pair"], buckets=(0.0, 0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SHADOW_LATENCY_DELTA = Histogram(
    "tiergate_shadow_latency_delta_seconds", "Candidate call time minus the primary's time in the gateway",
    ["shadow"],
    buckets=(-2.5, -1.0, -0.5, -0.25, -0.1, -0.05, -0.025, -0.01, -0.005, 0.0,
             0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SHADOW_LOG_DROPPED = Counter(
    "tiergate_shadow_log_dropped", "Shadow log rows lost because the writer fell behind or failed", ["shadow"]
)
