"""Soak: mixed-tier load at a fraction of measured capacity for a long time. Nothing may
fail and nothing may grow.

    unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python -m bench.soak --minutes 10'

Starts a stack (bench.stack), measures its capacity with a closed loop, then sends an open
loop at --load x capacity: premium, standard and batch in turn, no two bodies alike (so
neither coalescing nor a cache answers for the pools). Every --every seconds it samples
VmRSS, open file descriptors and threads of every process serving traffic: the gateway
replicas and HAProxy (Ray), each pool's TorchServe frontend (java) and its workers. It
passes when every request succeeded, no process was replaced, RSS grew at most
--max-rss-growth after the warm-up, descriptors and threads are back where they were once
idle, and nothing is left in flight or queued in the gateway. (Asyncio tasks live inside
the replica: tests/fuzz/test_no_leaks.py counts them in-process.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import httpx

PREDICT = "/predictions/resnet18"
TIERS = ("premium", "standard", "batch")
# Idle keep-alive connections close on timers of their own: a few either way are not a leak.
FD_SLACK, THREAD_SLACK = 8, 2
IDLE_PAUSE_S, IDLE_QUIET_S, IDLE_SETTLE_S = 5.0, 20.0, 120.0
CAPACITY_WINDOW_S = 5.0


@dataclass(frozen=True)
class Serving:
    """A process that serves traffic, by role (gateway, haproxy, pool <name> frontend/worker)."""

    role: str
    pid: int


def stack_processes(status: dict) -> list[Serving]:
    """The serving processes of a stack from `tiergate status --json`, found by ancestry."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, _, rest = stat.read_text().partition(" (")
            ppid = int(rest.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(pid))

    def descendants(pid: int) -> list[int]:
        found = []
        for child in children.get(pid, []):
            found += [child, *descendants(child)]
        return found

    serving = []
    for pid in descendants(status["supervisor_pid"]):
        name = _cmdline(pid)
        if name.startswith("ray::ServeReplica:tiergate"):
            serving.append(Serving("gateway", pid))
        elif Path(name.split(" ")[0]).name == "haproxy":
            serving.append(Serving("haproxy", pid))
    for pool in status["pools"]:
        for pid in descendants(pool["pid"]):
            name = _cmdline(pid)
            if name.startswith("java "):
                serving.append(Serving(f"pool {pool['name']} frontend", pid))
            elif "model_service_worker" in name:
                serving.append(Serving(f"pool {pool['name']} worker", pid))
    return serving


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def sample(pid: int) -> dict[str, int] | None:
    """VmRSS (KiB), open file descriptors and threads of a live process; None once it is gone."""
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    return {"rss_kib": int(status["VmRSS"].split()[0]), "fds": fds, "threads": int(status["Threads"])}


@dataclass
class Tally:
    """Outcomes of an open-loop run."""

    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    late_starts: int = 0  # requests the generator could not send on schedule (it was saturated)

    def add(self, outcome: str, seconds: float) -> None:
        self.statuses[outcome] = self.statuses.get(outcome, 0) + 1
        if outcome == "200":
            self.latencies_ms.append(seconds * 1000)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.sent - self.statuses.get("200", 0)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _post(client: httpx.AsyncClient, body: bytes, tier: str) -> str:
    try:
        response = await client.post(PREDICT, content=body, headers={"X-SLA-Tier": tier})
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(response.status_code)


def unique_requests(bodies: list[bytes]) -> Iterator[tuple[bytes, str]]:
    """(body, tier): tiers in turn, and no two bodies alike (a counter after the image's end,
    which decoders ignore), so neither coalescing nor a response cache stands in for a pool."""
    for index in count():
        yield bodies[index % len(bodies)] + b"#%d" % index, TIERS[index % len(TIERS)]


async def measure_capacity(url: str, bodies: list[bytes], seconds: float, concurrency: int = 8) -> list[float]:
    """Answers per second of a closed loop sending the soak's tier mix, after a short warm-up,
    in each window of CAPACITY_WINDOW_S (the machine's other tenants come and go)."""
    began = time.monotonic()
    counted_from, until = began + min(5.0, seconds / 3), began + seconds
    requests = unique_requests(bodies)
    answered: dict[int, int] = {}

    async def worker() -> None:
        while time.monotonic() < until:
            outcome = await _post(client, *next(requests))
            if outcome == "200" and time.monotonic() >= counted_from:
                window = int((time.monotonic() - counted_from) // CAPACITY_WINDOW_S)
                answered[window] = answered.get(window, 0) + 1

    async with _client(url, concurrency) as client:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    windows = max(1, int((until - counted_from) // CAPACITY_WINDOW_S))
    return [answered.get(window, 0) / CAPACITY_WINDOW_S for window in range(windows)]


def sustained(rates: list[float]) -> float:
    """The rate reached in at least three windows out of four: the slowest window alone
    would be one hiccup, the mean would overload the stack whenever the neighbours are busy."""
    return sorted(rates)[len(rates) // 4]


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, tally: Tally) -> None:
    """`rate` requests a second on a fixed schedule, whatever the answers' latency."""
    started = time.monotonic()
    requests = unique_requests(bodies)
    pending: set[asyncio.Task] = set()

    async def one(body: bytes, tier: str) -> None:
        sent = time.monotonic()
        tally.add(await _post(client, body, tier), time.monotonic() - sent)

    async with _client(url, 256) as client:
        for index in range(int(rate * seconds)):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:
                tally.late_starts += 1
            task = asyncio.create_task(one(*next(requests)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)


def _client(url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, trust_env=False, timeout=60.0, limits=limits)


async def _sample_every(processes: list[Serving], every_s: float, samples: list[dict], stop: asyncio.Event) -> None:
    started = time.monotonic()
    while True:
        samples.append({"t": round(time.monotonic() - started, 1), **{str(p.pid): sample(p.pid) for p in processes}})
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass


def idle_sample(processes: list[Serving]) -> dict[int, dict[str, int] | None]:
    """A sample once the connections of a finished load have closed: idle keep-alive
    connections close on timers of their own (the gateway's pool connections after 15 s idle),
    so wait until no descriptor count has fallen for IDLE_QUIET_S."""
    current = {process.pid: sample(process.pid) for process in processes}
    deadline, quiet_since = time.monotonic() + IDLE_SETTLE_S, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < IDLE_QUIET_S:
        time.sleep(IDLE_PAUSE_S)
        previous, current = current, {process.pid: sample(process.pid) for process in processes}
        if not all(now is None or then is None or now["fds"] >= then["fds"] for now, then in zip(current.values(), previous.values())):
            quiet_since = time.monotonic()
    return current


def growth(
    samples: list[dict],
    idle_before: dict[int, dict | None],
    idle_after: dict[int, dict | None],
    processes: list[Serving],
    warmup_s: float,
    max_rss_growth: float,
) -> dict:
    """Per process: RSS just after warm-up against the end of the load (medians of the
    first and last three samples), descriptors and threads idle before against idle after
    (under load they follow the number of connections open, not a leak), and whether
    any of it grew."""
    report = {}
    settled = [entry for entry in samples if entry["t"] >= warmup_s]
    for process in processes:
        series = [entry[str(process.pid)] for entry in settled]
        before, after = idle_before[process.pid], idle_after[process.pid]
        if not series or None in series or before is None or after is None:
            report[process.pid] = {"role": process.role, "problem": "exited during the soak"}
            continue
        rss_before = statistics.median(point["rss_kib"] for point in series[:3])
        rss_after = statistics.median(point["rss_kib"] for point in series[-3:])
        problems = []
        if rss_after > rss_before * (1 + max_rss_growth):
            problems.append(f"RSS grew {100 * (rss_after / rss_before - 1):.1f} %")
        for key, slack in (("fds", FD_SLACK), ("threads", THREAD_SLACK)):
            if after[key] > before[key] + slack:
                problems.append(f"{key} grew {before[key]} -> {after[key]}")
        report[process.pid] = {
            "role": process.role,
            "rss_mib": [round(rss_before / 1024, 1), round(rss_after / 1024, 1)],
            "rss_growth_pct": round(100 * (rss_after / rss_before - 1), 2),
            "fds": [before["fds"], after["fds"]],
            "threads": [before["threads"], after["threads"]],
            "problem": "; ".join(problems) or None,
        }
    return report


def gateway_backlog(url: str) -> float:
    """Calls the gateway still holds in flight or queued for any pool (0 when idle)."""
    text = httpx.get(url + "/metrics", trust_env=False, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("tiergate_pool_inflight{", "tiergate_pool_queued{"))
    )


def soak(
    url: str,
    status: dict,
    bodies: list[bytes],
    seconds: float,
    load: float = 0.7,
    capacity_s: float = 20.0,
    warmup_s: float | None = None,
    every_s: float = 10.0,
    max_rss_growth: float = 0.05,
) -> dict:
    """Run the soak against a running stack; the report says what failed under "problems"."""
    windows = asyncio.run(measure_capacity(url, bodies, capacity_s))
    capacity = sustained(windows)
    rate = load * capacity
    warmup_s = seconds / 5 if warmup_s is None else warmup_s
    processes = stack_processes(status)
    idle_before = idle_sample(processes)
    tally, samples = Tally(), []

    async def run() -> None:
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_every(processes, every_s, samples, stop))
        await open_loop(url, bodies, rate, seconds, tally)
        stop.set()
        await sampler

    began = time.monotonic()
    asyncio.run(run())
    backlog = gateway_backlog(url)
    processes_report = growth(samples, idle_before, idle_sample(processes), processes, warmup_s, max_rss_growth)
    problems = [f"pid {pid} ({entry['role']}): {entry['problem']}" for pid, entry in processes_report.items() if entry["problem"]]
    if tally.errors:
        problems.append(f"{tally.errors} of {tally.sent} requests failed: {tally.statuses}")
    if backlog:
        problems.append(f"{backlog:.0f} calls still in flight or queued in the gateway after the load")
    if {process.role for process in processes} < {"gateway", "haproxy"}:
        problems.append(f"serving processes not found: {sorted({p.role for p in processes})}")
    return {
        "capacity_rps": round(capacity, 1),
        "capacity_windows_rps": windows,
        "load": load,
        "rate_rps": round(rate, 1),
        "seconds": round(time.monotonic() - began, 1),
        "warmup_s": warmup_s,
        "sent": tally.sent,
        "statuses": tally.statuses,
        "late_starts": tally.late_starts,
        "p50_ms": round(tally.percentile(0.5), 1),
        "p99_ms": round(tally.percentile(0.99), 1),
        "processes": processes_report,
        "problems": problems,
        "samples": samples,  # the series behind "processes", by pid
    }


def markdown(report: dict) -> str:
    summary = (
        f"capacity {report['capacity_rps']} rps (closed loop, c=8, sustained in 3 of 4 {CAPACITY_WINDOW_S:.0f} s windows); "
        f"soak at {report['load']:.0%} = {report['rate_rps']} rps for {report['seconds']:.0f} s: {report['sent']} "
        f"requests {report['statuses']}, p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, "
        f"{report['late_starts']} sent late by the load generator"
    )
    lines = [
        summary,
        "",
        "| process | RSS after warm-up → end (MiB) | growth | fds idle before → after | threads idle before → after |",
        "|---|---|---|---|---|",
    ]
    for pid, entry in report["processes"].items():
        if "rss_mib" not in entry:
            lines.append(f"| {entry['role']} ({pid}) | {entry['problem']} | | | |")
            continue
        lines.append(
            f"| {entry['role']} | {entry['rss_mib'][0]} → {entry['rss_mib'][1]} | {entry['rss_growth_pct']:+.2f} % "
            f"| {entry['fds'][0]} → {entry['fds'][1]} | {entry['threads'][0]} → {entry['threads'][1]} |"
        )
    lines.append("")
    lines.append("problems: " + ("; ".join(report["problems"]) or "none"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .stack import base_config, distinct_jpegs, running_stack

    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between process samples")
    parser.add_argument("--max-rss-growth", type=float, default=0.05)
    parser.add_argument("--json", type=Path, default=None, help="also write the full report here")
    args = parser.parse_args(argv)

    with running_stack(base_config(artifacts_dir=str(Path("artifacts").resolve()))) as status:
        report = soak(
            status["gateway_url"], status, distinct_jpegs(64), args.minutes * 60, args.load,
            args.capacity_seconds, every_s=args.every, max_rss_growth=args.max_rss_growth,
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
