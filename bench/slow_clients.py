"""Slow clients, as an attacker runs them: many connections that trickle a request's head
(slowloris) or its body (slow upload), reopened as soon as the server cuts one off, from
several source addresses of 127.0.0.0/8 (like many hosts; loopback only).

    python -m bench.slow_clients slowloris --connections 4200 --sources 21 --seconds 30 --url http://127.0.0.1:8000
    python -m bench.slow_clients slow-upload --connections 300 --seconds 30 --url http://127.0.0.1:8000

Prints one JSON line when done: how many connections it opened, what the server answered
when it cut one off (status line, or `closed` without an answer, `refused`), and the open
connections sampled every second (the attack's strength over time). Run by
tests/integration/test_slow_clients.py and bench/hostile.py as a separate process, so the
attack never shares an interpreter with the legitimate client being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
import urllib.parse
from collections import Counter

PATH = "/predictions/resnet18"
# A slow upload first sends more than HAProxy's request buffer (16 KB), so the request
# reaches a gateway replica, then trickles: the case where the replica's slot is held.
UPLOAD_BURST_BYTES = 20_000
UPLOAD_DECLARED_BYTES = 4_000_000


class Attack:
    def __init__(self, kind: str, host: str, port: int, sources: list[str], every_s: float, ramp_s: float) -> None:
        self.kind, self.host, self.port, self.sources = kind, host, port, sources
        self.every_s, self.ramp_s = every_s, ramp_s
        self.open = 0
        self.opened = 0
        self.outcomes: Counter[str] = Counter()

    def request_head(self) -> bytes:
        head = f"POST {PATH} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: image/jpeg\r\n"
        if self.kind == "slow-upload":
            return (head + f"Content-Length: {UPLOAD_DECLARED_BYTES}\r\n\r\n").encode() + b"\xff" * UPLOAD_BURST_BYTES
        return head.encode()  # the head never ends

    async def connection(self, index: int, connections: int, until: float) -> None:
        source = self.sources[index % len(self.sources)]
        # Openings spread over the ramp: connections cut after a timeout then come back spread
        # too, as many independent clients would, instead of all reconnecting at once.
        await asyncio.sleep(self.ramp_s * index / connections)
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port, local_addr=(source, 0))
            except OSError:
                self.outcomes["refused"] += 1
                await asyncio.sleep(0.2)
                continue
            self.opened += 1
            self.open += 1
            try:
                self.outcomes[await self.trickle(reader, writer, until)] += 1
            finally:
                self.open -= 1
                writer.close()

    async def trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, until: float) -> str:
        """Trickle until the server answers or closes; return what it did."""
        try:
            writer.write(self.request_head())
            while time.monotonic() < until:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.every_s)
                except TimeoutError:
                    writer.write(b"X-a: b\r\n" if self.kind == "slowloris" else b"\xff")
                    await writer.drain()
                    continue
                return line.decode(errors="replace").strip()[:12] or "closed"
            return "still open"
        except OSError:
            return "closed"

    async def run(self, connections: int, seconds: float) -> dict:
        until = time.monotonic() + seconds
        samples: list[int] = []

        async def sample() -> None:
            while time.monotonic() < until:
                await asyncio.sleep(1.0)
                samples.append(self.open)

        await asyncio.gather(sample(), *(self.connection(index, connections, until) for index in range(connections)))
        steady = samples[int(self.ramp_s) + 1:-1] or [0]  # after the ramp, before the end
        return {
            "kind": self.kind, "connections": connections, "sources": len(self.sources), "seconds": seconds,
            "ramp_s": self.ramp_s, "opened": self.opened, "outcomes": dict(self.outcomes), "open_samples": samples,
            "open_min": min(steady), "open_mean": round(statistics.fmean(steady)),
        }


def sources(count: int) -> list[str]:
    """Loopback addresses other than 127.0.0.1 (which the legitimate client uses)."""
    return [f"127.0.{index // 250}.{index % 250 + 2}" for index in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["slowloris", "slow-upload"])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--connections", type=int, default=4200)
    parser.add_argument("--sources", type=int, default=21)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between two trickled bytes/lines")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which the connections first open")
    args = parser.parse_args(argv)
    if not urllib.parse.urlsplit(args.url).hostname.startswith("127."):
        raise SystemExit("slow clients only ever run against loopback")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 1024)), hard))
    url = urllib.parse.urlsplit(args.url)
    attack = Attack(args.kind, url.hostname, url.port or 80, sources(args.sources), args.every, args.ramp)
    print(json.dumps(asyncio.run(attack.run(args.connections, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
