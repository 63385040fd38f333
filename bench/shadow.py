"""Issue 5's figures: primary latency with shadowing off versus 100 % shadowing to a
healthy, a slow and a dead target, all in one run against one stack.

Each scenario is a tier routed to the same int8 CPU pool, with (or without) a shadow
test of its own, so switching scenario is switching the X-SLA-Tier header:

    off      no shadow test
    off-a/a  no shadow test either: off measured twice shows the machine's own noise
    healthy  a real TorchServe candidate (fp32) on this machine, sharing its cores
    stub     an instant stand-in target: the gateway's own cost of shadowing
    slow     a stand-in that answers after 2 s
    dead     a closed port

The stand-ins run in a process of their own, so their work never delays the load
generator's clock. Scenarios run interleaved in short phases, round after round, so
drift and other load on a shared machine hit all of them alike. Besides latency, the
gateway replica's own CPU time per request is read from /proc: unlike latency on a
busy machine, it shows what shadowing costs the gateway itself.
Run inside a private network namespace (Ray binds every address):
    unshare --net -- sh -c 'ip link set lo up && .venv/bin/python -m bench.shadow'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import sys
import tempfile
from pathlib import Path

from bench.loadgen import Result, closed_loop
from bench.stack import base_config, cat_jpeg, gateway_counter, running_stack, tiergate

STUB_PORT, SLOW_PORT, DEAD_PORT = 8301, 8302, 8303
SLOW_S = 2.0
SCENARIOS = ("off", "healthy", "stub", "slow", "dead", "off-a/a")
SHADOWED = {"healthy": "candidate", "stub": "stub", "slow": "slow", "dead": "dead"}
# A fixed top-5 that never matches the model's: every stand-in sample is a logged disagreement.
STUB_ANSWER = json.dumps({"stub-a": 0.4, "stub-b": 0.3, "stub-c": 0.2, "stub-d": 0.05, "stub-e": 0.05}).encode()


def tier(scenario: str) -> str:
    return scenario.replace("/", "")  # tier names are [A-Za-z0-9_.-]


def bench_config(shadow_log: Path) -> dict:
    def local(variant: str, port: int) -> dict:
        return {"variant": variant, "inference_port": port, "management_port": port + 1, "metrics_port": port + 2}

    shadow = {"model": "resnet18", "sample_rate": 1.0, "max_concurrency": 4, "timeout_ms": 5000}
    return base_config(
        default_tier="off",
        coalesce=False,  # every request is its own backend call, and its own shadow sample
        shadow_log=str(shadow_log),
        pools={
            "cpu": {"url": "http://127.0.0.1:8090", "max_concurrency": 8, "local": local("int8", 8090)},
            "candidate": {"url": "http://127.0.0.1:8100", "local": local("fp32", 8100)},
            "stub": {"url": f"http://127.0.0.1:{STUB_PORT}"},
            "slow": {"url": f"http://127.0.0.1:{SLOW_PORT}"},
            "dead": {"url": f"http://127.0.0.1:{DEAD_PORT}"},
        },
        tiers={tier(name): {"pools": ["cpu"], "deadline_ms": 30000} for name in SCENARIOS},
        shadows=[
            {"name": name, "tiers": [name], "target_pool": target, **shadow} for name, target in SHADOWED.items()
        ],
    )


def run_stand_ins() -> None:
    """Minimal keep-alive HTTP/1.1 servers answering STUB_ANSWER at once and after SLOW_S."""

    def answering_after(delay_s: float):
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                    await reader.readexactly(int(length.group(1)) if length else 0)
                    await asyncio.sleep(delay_s)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(STUB_ANSWER), STUB_ANSWER)
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        return serve

    async def serve_forever() -> None:
        await asyncio.start_server(answering_after(0.0), "127.0.0.1", STUB_PORT)
        await asyncio.start_server(answering_after(SLOW_S), "127.0.0.1", SLOW_PORT)
        await asyncio.Event().wait()

    asyncio.run(serve_forever())


def shadow_counters(gateway: str) -> dict[str, dict[str, float]]:
    series = {
        "mirrored": ("tiergate_shadow_mirrored_total", {}),
        "full": ("tiergate_shadow_dropped_total", {"reason": "full"}),
        "target_down": ("tiergate_shadow_dropped_total", {"reason": "target_down"}),
        "errors": ("tiergate_shadow_errors_total", {}),
    }
    return {
        name: {kind: gateway_counter(gateway, metric, shadow=name, **labels) for kind, (metric, labels) in series.items()}
        for name in SHADOWED
    }


def replica_pids(supervisor_pid: int) -> list[int]:
    """The gateway's Ray Serve replica processes: descendants of this stack's supervisor."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [supervisor_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica"):
                found.append(pid)
        except OSError:
            pass
    return found


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def measure(gateway: str, replicas: list[int], seconds: float, rounds: int, concurrencies: tuple[int, ...]):
    """Per (scenario, concurrency): the merged load result and the replica CPU seconds it took."""
    body = cat_jpeg()
    url = gateway + "/predictions/resnet18"
    merged: dict[tuple[str, int], Result] = {}
    cpu: dict[tuple[str, int], float] = {}
    for concurrency in concurrencies:
        await closed_loop("warm-up", url, body, {"X-SLA-Tier": "off"}, concurrency, 3.0)
        for _ in range(rounds):
            for scenario in SCENARIOS:
                cpu_before = cpu_seconds(replicas)
                result = await closed_loop(scenario, url, body, {"X-SLA-Tier": tier(scenario)}, concurrency, seconds)
                key = (scenario, concurrency)
                cpu[key] = cpu.get(key, 0.0) + cpu_seconds(replicas) - cpu_before
                total = merged.setdefault(key, Result(scenario, concurrency, 0, 0, 0.0, []))
                total.requests += result.requests
                total.errors += result.errors
                total.seconds += result.seconds
                total.latencies_ms += result.latencies_ms
    await asyncio.sleep(SLOW_S + 1)  # let the last slow shadow calls land before counting
    return merged, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    shadow_log = Path(tempfile.mkdtemp(prefix="tiergate-bench-shadow-")) / "shadow.sqlite"
    stand_ins = multiprocessing.Process(target=run_stand_ins, daemon=True)
    stand_ins.start()
    try:
        with running_stack(bench_config(shadow_log)) as status:
            replicas = replica_pids(status["supervisor_pid"])
            load_before = os.getloadavg()[0]
            merged, cpu = asyncio.run(
                measure(status["gateway_url"], replicas, args.seconds, args.rounds, tuple(args.concurrency))
            )
            load_after = os.getloadavg()[0]
            counters = shadow_counters(status["gateway_url"])
    finally:
        stand_ins.terminate()
    report = tiergate("shadow", "report", "--log", str(shadow_log)).stdout

    print(f"{args.rounds} rounds × {args.seconds:g} s per scenario, interleaved; primary: int8 CPU pool; "
          f"{os.cpu_count()} cores, 1-min load average {load_before:.1f} before, {load_after:.1f} after; "
          f"{len(replicas)} gateway replica(s)\n")
    for concurrency in args.concurrency:
        off = merged[("off", concurrency)]
        off_cpu_ms = 1000 * cpu[("off", concurrency)] / off.requests
        for scenario in SCENARIOS:
            result = merged[(scenario, concurrency)]
            cpu_ms = 1000 * cpu[(scenario, concurrency)] / result.requests
            line = f"{result.row()}  replica CPU {cpu_ms:5.2f} ms/req"
            if scenario != "off":
                line += (f"   p50 ×{result.p50 / off.p50:.3f}  p99 ×{result.percentile(0.99) / off.percentile(0.99):.3f}"
                         f"  CPU ×{cpu_ms / off_cpu_ms:.3f}")
            print(line)
        print()
    print("shadow samples over the whole run (all concurrencies):")
    for scenario, seen in counters.items():
        print(f"  {scenario:<8} mirrored {seen['mirrored']:6.0f}  dropped: full {seen['full']:6.0f}, "
              f"target down {seen['target_down']:6.0f}  errors {seen['errors']:6.0f}")
    print("\n`tiergate shadow report` of the run:\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
