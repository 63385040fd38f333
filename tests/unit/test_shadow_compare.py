"""Shadow comparison and sampling, without a gateway around them."""

import asyncio
import math
import random
import time

import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.call import Call, Inference, Reply
from gateway.config import parse_config
from gateway.pool_client import PoolClient
from gateway.profiles import Comparison, profile_for
from gateway.profiles.base import RowCountMismatch
from gateway.profiles.topk import compare_one, compare_top_k, parse_top_k
from gateway.shadow import ShadowStage, judge

from .fakes import HandlerTransport, config_data


def test_identical_answers_compare_equal():
    answer = {"tabby": 0.5, "tiger_cat": 0.2, "lynx": 0.1}
    assert compare_one(answer, dict(answer), 0.05) == Comparison(
        True, 1.0, 0.0, 0.05, {"tabby": 0.0, "tiger_cat": 0.0, "lynx": 0.0}
    )


def test_top1_overlap_and_largest_delta():
    primary = {"tabby": 0.50, "tiger_cat": 0.20, "lynx": 0.10}
    candidate = {"tiger_cat": 0.45, "tabby": 0.40, "egyptian_cat": 0.05}
    result = compare_one(primary, candidate, 0.05)
    assert not result.top1_same
    assert result.overlap == pytest.approx(2 / 3)
    assert result.max_delta == pytest.approx(0.25)  # tiger_cat 0.20 → 0.45
    # Listed by one side only: the other side's probability is at most its last listed one,
    # so the smallest consistent difference is counted (lynx 0.10 vs ≤ 0.05; egyptian_cat 0.05 vs ≤ 0.10).
    assert result.deltas["lynx"] == pytest.approx(0.05)
    assert result.deltas["egyptian_cat"] == 0.0


def test_parse_answers_ranks_and_truncates():
    body = orjson.dumps({"b": 0.1, "a": 0.7, "c": 0.2})
    (answer,) = parse_top_k(body, 2)
    assert list(answer.items()) == [("a", 0.7), ("c", 0.2)]
    for bad in (b"not json", b"[]", b"{}", b'{"a": "high"}', b'{"a": true}'):
        with pytest.raises(ValueError):
            parse_top_k(bad, 5)


def open_inference(rows: list[list[tuple[str, float]]]) -> bytes:
    shape = [len(rows), len(rows[0])]
    return orjson.dumps({"outputs": [
        {"name": "top5_probabilities", "datatype": "FP32", "shape": shape, "data": [p for row in rows for _, p in row]},
        {"name": "top5_labels", "datatype": "BYTES", "shape": shape, "data": [label for row in rows for label, _ in row]},
    ]})


def test_parse_answers_reads_open_inference_outputs_per_image():
    body = open_inference([[("tabby", 0.6), ("crane", 0.2), ("crane", 0.1)], [("kite", 0.9), ("jay", 0.05), ("hen", 0.01)]])
    assert parse_top_k(body, 2) == [{"tabby": 0.6, "crane": 0.2}, {"kite": 0.9, "jay": 0.05}]
    broken = orjson.loads(body)
    broken["outputs"][1]["shape"] = [2, 2]
    for bad in (orjson.dumps(broken), orjson.dumps({"outputs": broken["outputs"][:1]})):
        with pytest.raises(ValueError):
            parse_top_k(bad, 5)


def test_a_batch_compares_as_its_worst_image():
    same = [{"a": 0.6, "b": 0.4}, {"c": 0.9, "d": 0.1}]
    other = [{"a": 0.6, "b": 0.4}, {"d": 0.55, "c": 0.45}]
    result = compare_top_k(same, other, 0.05)
    assert not result.top1_same and result.max_delta == pytest.approx(0.45)
    assert result.deltas["1:c"] == pytest.approx(0.45) and result.deltas["0:a"] == 0.0
    assert compare_top_k(same, same, 0.05).top1_same
    with pytest.raises(RowCountMismatch):
        compare_top_k(same, same[:1], 0.05)


@pytest.mark.parametrize(
    "candidate, baseline, outcome",
    [
        (Comparison(True, 1.0, 0.04, 0.05), None, "agree"),
        (Comparison(True, 1.0, 0.06, 0.05), None, "disagree"),  # same class, probability beyond tolerance
        (Comparison(False, 0.8, 0.01, 0.05), None, "disagree"),
        (Comparison(True, 1.0, 0.06, 0.05), Comparison(True, 1.0, 0.02, 0.05), "agree"),  # within the primary's own noise
        (Comparison(False, 0.8, 0.01, 0.05), Comparison(False, 0.8, 0.01, 0.05), "noisy"),
        (Comparison(False, 0.8, 0.01, 0.05), Comparison(True, 1.0, 0.0, 0.05), "disagree"),
    ],
)
def test_verdict(candidate, baseline, outcome):
    assert judge(candidate, baseline) == outcome


def sampled(name: str) -> float:
    """Samples taken: mirrored, or dropped because the test's calls were all in flight."""
    return sum(
        REGISTRY.get_sample_value(metric, {"shadow": name, **labels}) or 0.0
        for metric, labels in (("tiergate_shadow_mirrored_total", {}), ("tiergate_shadow_dropped_total", {"reason": "full"}))
    )


def stage(tmp_path, rate: float, seed: int, name: str, **shadow) -> ShadowStage:
    pools = {**config_data()["pools"], "candidate": {"url": "http://candidate.pool:8100"}}
    config = parse_config(config_data(
        pools=pools,
        shadows=[{"name": name, "model": "resnet18", "sample_rate": rate, "target_pool": "candidate",
                  "max_concurrency": 100_000, **shadow}],
        shadow_log=str(tmp_path / "shadow.sqlite"),
    ))
    never = asyncio.Event()

    async def hang(request):
        await never.wait()

    profiles = {name: profile_for(model) for name, model in config.models.items()}
    return ShadowStage(config, PoolClient(config.pools, HandlerTransport(hang)), profiles, rng=random.Random(seed))


def answered(tier: str = "standard", version: str | None = None) -> tuple[Call, Reply]:
    call = Call("resnet18", version, tier, b"\xff\xd8\xff", "req", time.monotonic() + 5)
    return call, Reply(Inference(orjson.dumps({"tabby": 1.0}), "application/json", "cpu-int8"), "cpu")


async def mirror_many(shadows: ShadowStage, count: int, **call) -> None:
    """Offer `count` answered calls; the shadow calls themselves are cancelled unanswered."""
    call, reply = answered(**call)
    for _ in range(count):
        shadows.mirror(call, reply, 0.01)
    for task in list(shadows._tasks):
        task.cancel()
    await asyncio.gather(*shadows._tasks, return_exceptions=True)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.25, 1.0])
async def test_sampling_is_seeded_and_respects_the_rate(tmp_path, rate):
    draws, seed, name = 4000, 11, f"rate{int(rate * 100)}"
    shadows = stage(tmp_path, rate, seed, name)
    await mirror_many(shadows, draws)
    await shadows.close()
    replay = random.Random(seed)
    expected = sum(replay.random() < rate for _ in range(draws))
    assert sampled(name) == expected  # exactly the injected generator's choices
    spread = 4.5 * math.sqrt(draws * rate * (1 - rate))
    assert abs(expected - draws * rate) <= spread


async def test_only_the_watched_tiers_and_version_are_sampled(tmp_path):
    name = "watching"
    shadows = stage(tmp_path, 1.0, 0, name, tiers=["premium"], version="2.0")
    await mirror_many(shadows, 10, tier="standard", version="2.0")
    await mirror_many(shadows, 10, tier="premium", version=None)
    assert sampled(name) == 0
    await mirror_many(shadows, 10, tier="premium", version="2.0")
    await shadows.close()
    assert sampled(name) == 10
