"""A one-minute soak of the session stack; the ten-minute one is `python -m bench.soak`
(figures in BENCHMARKS.md, "Soak"). Mixed tiers at 70 % of the capacity measured just
before: every request succeeds, no serving process is replaced or grows after warm-up,
and nothing is left in flight."""

from __future__ import annotations

from bench.soak import markdown, soak
from bench.stack import distinct_jpegs


def test_soak_one_minute(stack):
    report = soak(
        stack.url, stack.status(), distinct_jpegs(48), seconds=60, load=0.7, capacity_s=20, warmup_s=15, every_s=5,
    )
    print(markdown(report))
    assert report["problems"] == []
