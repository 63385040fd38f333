"""Shadow tests: mirror sampled traffic to a candidate model and compare the answers.

After the primary has answered (the client's response is already decided), each
shadow test watching the call's model and tier samples it with its `sample_rate`.
A sampled call is sent again, in a background task, to the test's target pool
through the same `PoolClient` that serves primary traffic, and the candidate's answer
is compared with the primary's by the model's profile: for classifiers the same top-1
class, top-k overlap and the largest |Δprobability|; for tensors and JSON numbers
elementwise within atol/rtol and cosine similarity; exact equality otherwise. With `noise_baseline` (Diffy's idea) the call also goes to the primary
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
both answers and the largest deltas, and the request body only when the test
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
from typing import Literal, Mapping

import orjson

from . import metrics
from .breaker import Breaker
from .call import Call, Reply
from .config import GatewayConfig, PoolConfig, ShadowTest
from .errors import GatewayError
from .pool_client import PoolClient, PoolDropped, PoolTimeout, PoolUnreachable
from .profiles import Comparison, Profile
from .profiles.base import RowCountMismatch

log = logging.getLogger("tiergate.shadow")

Outcome = Literal["agree", "disagree", "noisy", "error"]
MAX_LOGGED_ANSWER_BYTES = 16 * 1024  # a disagreement's answers, parsed, up to this size
MAX_LOGGED_DELTAS = 20
# Errors that mean the target is down (not busy, not refusing this input): they open the breaker.
TARGET_DOWN = frozenset({"unreachable", "dropped", "timeout", "PoolError"})


# --- comparison -------------------------------------------------------------------------
# How two answers compare is the model's profile's business (gateway/profiles); this module
# only judges the comparisons and records them.


def judge(candidate: Comparison, baseline: Comparison | None) -> Outcome:
    """Agree: same top-1 and every delta within the profile's tolerance, widened by the
    primary's own noise. Noisy: the candidate differs, but so does the primary from itself on top-1."""
    allowed = candidate.tolerance + (baseline.max_delta if baseline else 0.0)
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
    body: bytes | None = None
    seconds: float = 0.0
    error: str | None = None  # a bounded kind, usable as a metric label


class _Test:
    def __init__(self, config: ShadowTest, target: PoolConfig, profile: Profile) -> None:
        self.config = config
        self.profile = profile
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
    def __init__(
        self, config: GatewayConfig, pools: PoolClient, profiles: Mapping[str, Profile], rng: random.Random | None = None
    ) -> None:
        self._tests = [_Test(test, config.pools[test.target_pool], profiles[test.model]) for test in config.shadows]
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
        primary = reply.inference.body
        try:
            try:
                test.profile.compare(primary, primary, config.compare)
            except ValueError:  # the primary's answer is not of its profile's form: nothing to compare against
                metrics.SHADOW_ERRORS.labels(config.name, "primary", "unparseable").inc()
                return
            deadline = time.monotonic() + config.timeout_ms / 1000
            target = dataclasses.replace(
                call, model=config.target_model or config.model, version=config.target_version, deadline=deadline
            )
            asked = [self._ask(config.target_pool, target)]
            if config.noise_baseline:
                asked.append(self._ask(reply.pool, dataclasses.replace(call, deadline=deadline)))
            candidate, *baseline = await asyncio.gather(*asked)
            if candidate.error in TARGET_DOWN:
                test.breaker.failed()
            else:
                test.breaker.succeeded()
            self._record(test, call, primary, candidate, baseline[0] if baseline else None, primary_s)
        except Exception:  # a bug here must never surface anywhere but the log
            log.exception("shadow %s failed comparing request %s", config.name, call.request_id)
            metrics.SHADOW_ERRORS.labels(config.name, "candidate", "internal").inc()
        finally:
            test.inflight -= 1

    async def _ask(self, pool: str, call: Call) -> _Answer:
        started = time.perf_counter()
        try:
            inference = await self._pools.infer(pool, call)
            return _Answer(inference.body, time.perf_counter() - started)
        except PoolUnreachable:
            return _Answer(error="unreachable")
        except PoolDropped:
            return _Answer(error="dropped")
        except PoolTimeout:
            return _Answer(error="timeout")
        except GatewayError as exc:
            return _Answer(error=exc.code)

    def _record(
        self,
        test: _Test,
        call: Call,
        primary: bytes,
        candidate: _Answer,
        baseline: _Answer | None,
        primary_s: float | None,
    ) -> None:
        config = test.config
        name = config.name
        row = {"shadow": name, "at": time.time(), "request_id": call.request_id, "tier": call.tier}
        against_candidate, error = _compared(test, primary, candidate)
        if error is not None:
            metrics.SHADOW_ERRORS.labels(name, "candidate", error).inc()
            self._log.append(Sample(**row, outcome="error", error=error))
            return
        against_baseline = None
        if baseline is not None:
            against_baseline, error = _compared(test, primary, baseline)
            if error is not None:
                metrics.SHADOW_ERRORS.labels(name, "baseline", error).inc()
        outcome = judge(against_candidate, against_baseline)
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
                "candidate": _as_logged(candidate.body),
                "delta": dict(sorted(against_candidate.deltas.items(), key=lambda item: -item[1])[:MAX_LOGGED_DELTAS]),
                **({"baseline": _as_logged(baseline.body)} if against_baseline else {}),
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


def _compared(test: _Test, primary: bytes, answer: _Answer) -> tuple[Comparison | None, str | None]:
    """The comparison with the primary's answer, or the bounded error kind that prevented it."""
    if answer.error is not None:
        return None, answer.error
    try:
        return test.profile.compare(primary, answer.body, test.config.compare), None
    except RowCountMismatch:
        return None, "image_count"
    except ValueError:  # includes orjson.JSONDecodeError
        return None, "unparseable"


def _as_logged(answer: bytes) -> object:
    """An answer as the log keeps it: parsed JSON (an answer, never a request payload), bounded."""
    if len(answer) <= MAX_LOGGED_ANSWER_BYTES:
        try:
            return orjson.loads(answer)
        except orjson.JSONDecodeError:
            pass
    return {"bytes": len(answer), "start": answer[:256].decode("utf-8", "replace")}
