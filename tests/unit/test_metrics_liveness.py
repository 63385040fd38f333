"""Gauges shared by replicas through PROMETHEUS_MULTIPROC_DIR count live replicas only."""

import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from gateway import metrics

REPO = Path(__file__).resolve().parents[2]
# A replica: sets its share of the gpu pool's slots, counts one request, stays alive until told.
REPLICA = (
    "import sys; from gateway import metrics; metrics.POOL_SLOTS.labels('gpu').set(8);"
    "metrics.REQUESTS.labels('premium', 'gpu', 'resnet18', '200', 'cpu-fp32').inc();"
    "print('ready', flush=True); sys.stdin.readline()"
)


def test_gauges_of_dead_replicas_are_not_summed(tmp_path):
    """Issue 18, item 5: after replicas were replaced, the slots gauge summed the dead ones' too."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", REPLICA], env=env, input="\n", text=True, check=True, cwd=REPO)  # gone
    live = subprocess.Popen([sys.executable, "-c", REPLICA], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert live.stdout.readline().strip() == "ready"
        assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 2
        with mock.patch.dict(os.environ, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}):
            text = metrics.render()[0].decode()
    finally:
        live.communicate("\n", timeout=30)
    assert 'tiergate_pool_slots{pool="gpu"} 8.0' in text  # the live replica's 8, not 16
    # What the dead replica counted happened: counters keep it.
    assert 'tiergate_requests_total{backend="cpu-fp32",code="200",model="resnet18",pool="gpu",tier="premium"} 2.0' in text
