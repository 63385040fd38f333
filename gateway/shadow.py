"""Shadow tests: mirror sampled traffic to a candidate model and compare the answers.

After the primary has answered (the client's response is already decided), each
shadow test watching the call's model and tier samples it with its `sample_rate`.
A sampled call is sent again, in a background task, to the test's target pool
through the same `PoolClient` that serves primary traffic, and the candidate's top-k
is compared with the primary's: same top-1 class, top-k overlap, and the largest
|Δprobability|. With `noise_baseline` (Diffy's idea) the call also goes to the primary
pool a second time, and whatever the primary disagrees with itself about is not
blamed on the candidate. That second call goes to the pool directly (not through the
router's slots), bounded only by the test's `max_concurrency`: it adds real load to a
serving pool, which is why it is off by default.

The primary never waits for any of this: a test has at most `max_concurrency` shadow
calls in flight, and a sample arriving when they are all taken is dropped and
counted, so a slow target costs the primary nothing but a counter. A dead one would
still cost a failed connection per sample, so each test has a circuit breaker (the
target pool's `breaker_failures`/`breaker_open_s`): while it is open, samples are
dropped as `target_down`, and one probe per `breaker_open_s` checks the target again.

Every compared sample lands in the shadow log (SQLite) as one compact row of numbers,
so agreement and latency can be plotted over time; rows of disagreements also carry
both top-k answers and the per-class deltas, and the request body only when the test
has `log_payloads`. Rows are written by one thread per pipeline in batched transactions
(the event loop only enqueues), WAL mode lets several replicas share the file, and the
oldest rows are deleted beyond `shadow_log_max_rows`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from . import metrics
from .admit import Call
from .breaker import Breaker
from .config import GatewayConfig, PoolConfig, ShadowTest
from .errors import GatewayError
from .pool_client import PoolClient, PoolDropped, PoolTimeout, PoolUnreachable
from .route import Reply

log = logging.getLogger("tiergate.shadow")

Outcome = Literal["agree", "disagree", "noisy", "error"]
# Errors that mean the target is down (not busy, not refusing this input): they open the breaker.
TARGET_DOWN = frozenset({"unreachable", "dropped", "timeout", "PoolError"})


# --- comparison -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """How one top-k answer differs from the primary's."""

    top1_same: bool
    overlap: float  # shared classes / classes listed, 0..1
    max_delta: float  # largest |Δprobability| over the classes either side lists
    deltas: dict[str, float]


TopK = dict[str, float]  # one image's most likely classes, most likely first


def parse_answers(body: bytes, k: int) -> list[TopK]:
    """Per image, the k most likely classes of a pool's answer: the TorchServe API's
    `{class: probability}` (one image) or the Open Inference outputs `top5_probabilities`
    and `top5_labels` (N images), so both API surfaces can be shadowed."""
    answer = orjson.loads(body)
    if isinstance(answer, dict) and isinstance(answer.get("outputs"), list):
        return _open_inference_top_k(answer["outputs"], k)
    return [_top_k(answer, k)]


def _top_k(answer: object, k: int) -> TopK:
    if not isinstance(answer, dict) or not answer:
        raise ValueError("expected a non-empty {class: probability} object")
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in answer.values()):
        raise ValueError("probabilities must be numbers")
    ranked = sorted(answer.items(), key=lambda item: (-item[1], item[0]))
    return {label: float(p) for label, p in ranked[:k]}


def _open_inference_top_k(outputs: list, k: int) -> list[TopK]:
    named = {output.get("name"): output for output in outputs if isinstance(output, dict)}
    probabilities, labels = named.get("top5_probabilities"), named.get("top5_labels")
    if probabilities is None or labels is None:
        raise ValueError("expected the outputs top5_probabilities and top5_labels")
    shape = probabilities.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and shape == labels.get("shape")):
        raise ValueError("top5_probabilities and top5_labels must share a [N, k] shape")
    rows, width = shape
    values, names = probabilities.get("data"), labels.get("data")
    if not (isinstance(values, list) and isinstance(names, list) and len(values) == len(names) == rows * width):
        raise ValueError("output data does not match its shape")
    answers = []
    for row in range(rows):
        answer: dict = {}
        for label, probability in zip(names[row * width:(row + 1) * width], values[row * width:(row + 1) * width]):
            answer.setdefault(str(label), probability)  # ImageNet names a few classes twice
        answers.append(_top_k(answer, k))
    return answers


def compare(primary: dict[str, float], other: dict[str, float]) -> Comparison:
    """Compare two top-k answers.

    A class listed by one side only has, on the other side, a probability somewhere
    below that side's last listed one; its delta is the smallest difference consistent
    with that (0 when it could be equal), so truncation is never blamed on a model.
    """
    primary_floor, other_floor = min(primary.values()), min(other.values())
    deltas = {}
    for label in primary.keys() | other.keys():
        if label in primary and label in other:
            deltas[label] = abs(primary[label] - other[label])
        elif label in primary:
            deltas[label] = max(0.0, primary[label] - other_floor)
        else:
            deltas[label] = max(0.0, other[label] - primary_floor)
    return Comparison(
        top1_same=next(iter(primary)) == next(iter(other)),
        overlap=len(primary.keys() & other.keys()) / max(len(primary), len(other)),
        max_delta=max(deltas.values()),
        deltas=deltas,
    )


def compare_answers(primary: list[TopK], other: list[TopK]) -> Comparison:
    """Compare answers image by image; a batch agrees only as far as its worst image does."""
    if len(primary) != len(other):
        raise ValueError(f"answers for {len(primary)} and {len(other)} images")
    if len(primary) == 1:
        return compare(primary[0], other[0])
    each = [compare(mine, theirs) for mine, theirs in zip(primary, other)]
    return Comparison(
        top1_same=all(c.top1_same for c in each),
        overlap=min(c.overlap for c in each),
        max_delta=max(c.max_delta for c in each),
        deltas={f"{image}:{label}": delta for image, c in enumerate(each) for label, delta in c.deltas.items()},
    )


def judge(candidate: Comparison, baseline: Comparison | None, tolerance: float) -> Outcome:
    """Agree: same top-1 and every delta within tolerance, widened by the primary's own
    noise. Noisy: the candidate differs, but so does the primary from itself on top-1."""
    allowed = tolerance + (baseline.max_delta if baseline else 0.0)
    if candidate.top1_same and candidate.max_delta <= allowed:
        return "agree"
    if baseline is not None and not baseline.top1_same:
        return "noisy"
    return "disagree"


# --- the diff log -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One row of the shadow log: a compared sample, or a shadow call that failed."""

    shadow: str
    at: float  # unix time the comparison finished
    request_id: str
    tier: str
    outcome: Outcome
    top1_same: bool | None = None
    overlap: float | None = None
    max_delta: float | None = None
    baseline_max_delta: float | None = None
    latency_delta_ms: float | None = None  # candidate minus primary; None when the primary made no call
    error: str | None = None
    detail: str | None = None  # JSON, disagreements only
    payload: bytes | None = None  # the request body, disagreements of `log_payloads` tests only


SCHEMA = """
CREATE TABLE IF NOT EXISTS shadow_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    shadow TEXT NOT NULL,
    at REAL NOT NULL,
    request_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    outcome TEXT NOT NULL,
    top1_same INTEGER,
    overlap REAL,
    max_delta REAL,
    baseline_max_delta REAL,
    latency_delta_ms REAL,
    error TEXT,
    detail TEXT,
    payload BLOB
);
CREATE INDEX IF NOT EXISTS shadow_samples_by_test_time ON shadow_samples (shadow, at);
"""
COLUMNS = [field.name for field in dataclasses.fields(Sample)]
INSERT = f"INSERT INTO shadow_samples ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def open_log(path: Path, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection to the shared shadow log, creating it if needed (WAL: replicas share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(SCHEMA)
    return connection


_CLOSE = object()


class DiffLog:
    """Appends samples from the event loop without blocking it; a thread writes them."""

    BATCH = 1000
    FLUSH_S = 0.25

    def __init__(self, path: Path, max_rows: int, capacity: int = 10_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._queue: queue.Queue = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._write_until_closed, name="tiergate-shadow-log", daemon=True)
        self._thread.start()

    def append(self, sample: Sample) -> None:
        try:
            self._queue.put_nowait(sample)
        except queue.Full:  # the disk is behind: lose a row, never block a request
            metrics.SHADOW_LOG_DROPPED.labels(sample.shadow).inc()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread (blocking: call it off the event loop)."""
        try:
            self._queue.put(_CLOSE, timeout=timeout_s)
        except queue.Full:
            log.warning("shadow log writer is stuck; %d rows are lost", self._queue.qsize())
            return
        self._thread.join(timeout_s)

    def _write_until_closed(self) -> None:
        try:
            connection = open_log(self.path)
        except (sqlite3.Error, OSError) as exc:
            log.error("shadow log %s unusable, comparisons are not logged: %s", self.path, exc)
            connection = None
        closing = False
        while not closing:
            batch = self._next_batch()
            closing = batch[-1] is _CLOSE
            samples = [item for item in batch if item is not _CLOSE]
            if samples:
                self._write(connection, samples)
        if connection is not None:
            connection.close()

    def _next_batch(self) -> list:
        """The first queued item and whatever follows within FLUSH_S: a transaction costs
        far more than a row, so rows are written a batch at a time."""
        batch = [self._queue.get()]
        flush_at = time.monotonic() + self.FLUSH_S
        while len(batch) < self.BATCH and batch[-1] is not _CLOSE:
            try:
                batch.append(self._queue.get(timeout=max(0.0, flush_at - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write(self, connection: sqlite3.Connection | None, samples: list[Sample]) -> None:
        try:
            if connection is None:
                raise sqlite3.OperationalError("not open")
            connection.execute("BEGIN IMMEDIATE")  # one transaction per batch
            try:
                connection.executemany(INSERT, [tuple(getattr(s, c) for c in COLUMNS) for s in samples])
                # Ids only grow, so the newest max_rows rows are the ids above this line.
                connection.execute(
                    "DELETE FROM shadow_samples WHERE id <= (SELECT MAX(id) FROM shadow_samples) - ?",
                    (self.max_rows,),
                )
                connection.execute("COMMIT")
            except sqlite3.Error:
                connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.warning("shadow log: %d rows not written: %s", len(samples), exc)
            for sample in samples:
                metrics.SHADOW_LOG_DROPPED.labels(sample.shadow).inc()


# --- the mirroring stage ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    answers: list[TopK] | None = None  # per image
    seconds: float = 0.0
    error: str | None = None  # a bounded kind, usable as a metric label


class _Test:
    def __init__(self, config: ShadowTest, target: PoolConfig) -> None:
        self.config = config
        self.inflight = 0
        self.breaker = Breaker(target.breaker_failures, target.breaker_open_s)

    def watches(self, call: Call) -> bool:
        shadow = self.config
        return (
            call.model == shadow.model
            and (shadow.version is None or call.version == shadow.version)
            and (not shadow.tiers or call.tier in shadow.tiers)
        )


class ShadowStage:
    def __init__(self, config: GatewayConfig, pools: PoolClient, rng: random.Random | None = None) -> None:
        self._tests = [_Test(test, config.pools[test.target_pool]) for test in config.shadows]
        self._pools = pools
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task] = set()
        self._log = DiffLog(config.shadow_log, config.shadow_log_max_rows) if config.shadows else None

    def mirror(self, call: Call, reply: Reply, primary_s: float) -> None:
        """Start the background comparisons this answered call is sampled for; returns at once."""
        # A cache hit or a coalesced follower made no backend call: no latency to compare.
        primary_call_s = None if reply.coalesced or reply.cache == "hit" else primary_s
        for test in self._tests:
            if not test.watches(call) or self._rng.random() >= test.config.sample_rate:
                continue
            name = test.config.name
            if test.inflight >= test.config.max_concurrency:
                metrics.SHADOW_DROPPED.labels(name, "full").inc()
                continue
            if not test.breaker.allow():
                metrics.SHADOW_DROPPED.labels(name, "target_down").inc()
                continue
            test.inflight += 1
            metrics.SHADOW_MIRRORED.labels(name).inc()
            task = asyncio.create_task(self._shadow(test, call, reply, primary_call_s), name=f"shadow-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Give in-flight shadow calls their timeout to finish, cancel the rest, flush the log."""
        if self._tasks:
            grace_s = max(test.config.timeout_ms for test in self._tests) / 1000 + 0.5
            _, late = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._log is not None:
            await asyncio.to_thread(self._log.close)

    async def _shadow(self, test: _Test, call: Call, reply: Reply, primary_s: float | None) -> None:
        config = test.config
        try:
            try:
                primary = parse_answers(reply.inference.body, config.compare.top_k)
            except ValueError:  # the primary's answer is no top-k: nothing to compare against
                metrics.SHADOW_ERRORS.labels(config.name, "primary", "unparseable").inc()
                return
            deadline = time.monotonic() + config.timeout_ms / 1000
            target = dataclasses.replace(
                call, model=config.target_model or config.model, version=config.target_version, deadline=deadline
            )
            asked = [self._ask(config.target_pool, target, config.compare.top_k)]
            if config.noise_baseline:
                asked.append(self._ask(reply.pool, dataclasses.replace(call, deadline=deadline), config.compare.top_k))
            candidate, *baseline = await asyncio.gather(*asked)
            if candidate.error in TARGET_DOWN:
                test.breaker.failed()
            else:
                test.breaker.succeeded()
            self._record(config, call, primary, candidate, baseline[0] if baseline else None, primary_s)
        except Exception:  # a bug here must never surface anywhere but the log
            log.exception("shadow %s failed comparing request %s", config.name, call.request_id)
            metrics.SHADOW_ERRORS.labels(config.name, "candidate", "internal").inc()
        finally:
            test.inflight -= 1

    async def _ask(self, pool: str, call: Call, k: int) -> _Answer:
        started = time.perf_counter()
        try:
            inference = await self._pools.infer(pool, call)
            seconds = time.perf_counter() - started
            return _Answer(parse_answers(inference.body, k), seconds)
        except PoolUnreachable:
            return _Answer(error="unreachable")
        except PoolDropped:
            return _Answer(error="dropped")
        except PoolTimeout:
            return _Answer(error="timeout")
        except GatewayError as exc:
            return _Answer(error=exc.code)
        except ValueError:  # includes orjson.JSONDecodeError
            return _Answer(error="unparseable")

    def _record(
        self,
        config: ShadowTest,
        call: Call,
        primary: list[TopK],
        candidate: _Answer,
        baseline: _Answer | None,
        primary_s: float | None,
    ) -> None:
        name = config.name
        row = {"shadow": name, "at": time.time(), "request_id": call.request_id, "tier": call.tier}
        candidate = _for_as_many_images(candidate, primary)
        if candidate.error is not None:
            metrics.SHADOW_ERRORS.labels(name, "candidate", candidate.error).inc()
            self._log.append(Sample(**row, outcome="error", error=candidate.error))
            return
        against_candidate = compare_answers(primary, candidate.answers)
        against_baseline = None
        if baseline is not None:
            baseline = _for_as_many_images(baseline, primary)
            if baseline.error is not None:
                metrics.SHADOW_ERRORS.labels(name, "baseline", baseline.error).inc()
            else:
                against_baseline = compare_answers(primary, baseline.answers)
        outcome = judge(against_candidate, against_baseline, config.compare.tolerance)
        latency_delta_s = None if primary_s is None else candidate.seconds - primary_s

        for pair, comparison in (("candidate", against_candidate), ("baseline", against_baseline)):
            if comparison is not None:
                metrics.SHADOW_TOP1.labels(name, pair, "same" if comparison.top1_same else "different").inc()
                metrics.SHADOW_OVERLAP.labels(name, pair).observe(comparison.overlap)
                metrics.SHADOW_MAX_DELTA.labels(name, pair).observe(comparison.max_delta)
        metrics.SHADOW_OUTCOMES.labels(name, outcome).inc()
        if latency_delta_s is not None:
            metrics.SHADOW_LATENCY_DELTA.labels(name).observe(latency_delta_s)

        detail = payload = None
        if outcome != "agree":
            detail = orjson.dumps({
                "primary": _as_logged(primary),
                "candidate": _as_logged(candidate.answers),
                "delta": dict(sorted(against_candidate.deltas.items(), key=lambda item: -item[1])),
                **({"baseline": _as_logged(baseline.answers)} if against_baseline else {}),
            }).decode()
            payload = call.body if config.log_payloads else None
        self._log.append(Sample(
            **row,
            outcome=outcome,
            top1_same=against_candidate.top1_same,
            overlap=against_candidate.overlap,
            max_delta=against_candidate.max_delta,
            baseline_max_delta=against_baseline.max_delta if against_baseline else None,
            latency_delta_ms=None if latency_delta_s is None else latency_delta_s * 1000,
            detail=detail,
            payload=payload,
        ))


def _for_as_many_images(answer: _Answer, primary: list[TopK]) -> _Answer:
    """The answer, or an `image_count` error when it is not for as many images as the primary's."""
    if answer.error is None and len(answer.answers) != len(primary):
        return _Answer(error="image_count")
    return answer


def _as_logged(answers: list[TopK]) -> TopK | list[TopK]:
    """One image's top-k as is; a batch as the list of them."""
    return answers[0] if len(answers) == 1 else answers
