"""Hostile input against the real stack: HAProxy in front, the Ray Serve gateway, real
TorchServe decoding behind. Requests go over raw sockets, so nothing on the client side
tidies them up.

Outcome: client faults get 4xx (JSON from the gateway; HAProxy may answer a malformed
request with its own 4xx), never a 5xx; decompression bombs are refused by the gateway and
by the pools themselves; TorchServe's management API cannot be reached through the
gateway by any path, target form or Host; no serving process crashes or restarts, the pools
keep serving; and no log of the stack ever contains the planted payload marker.
"""

from __future__ import annotations

import io
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from bench.soak import stack_processes
from gateway import openapi
from gateway.config import parse_config
from gateway.stack import StatePaths
from tests.fuzz.inputs import (
    BODIES,
    HEADER_VALUES,
    MARKER,
    METHODS,
    PATHS,
    PREDICT,
    SMALL_IMAGES,
    encoded,
    jpeg_declaring,
    png_declaring,
)

from .conftest import pool_key, stack_config
from .images import cat_jpeg

# Headers that frame the message are the raw client's business, not the fuzzer's: a wrong
# Content-Length or Transfer-Encoding would only leave the socket waiting for bytes.
FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"host", b"expect"}
TORCHSERVE_MANAGEMENT_WORDS = (b"modelName", b"minWorkers", b"unregistered", b"Processing worker updates")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def from_gateway(self) -> bool:
        return self.headers.get("content-type") == "application/json"


def exchange(port: int, head: bytes, body: bytes = b"", timeout_s: float = 30.0) -> Reply | None:
    """One request on its own connection, exactly as given; the first response back, or None
    when the connection was closed without one (refused: nothing was accepted)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        try:
            connection.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read: the answer is still waiting
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                assert not received, f"a partial answer: {received[:200]!r}"
                return None
            received += chunk
        header_block, _, rest = received.partition(b"\r\n\r\n")
        status_line, *lines = header_block.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", -1))
        while (length < 0 or len(rest) < length) and (chunk := connection.recv(65536)):
            rest += chunk
    return Reply(int(status_line.split(" ")[1]), headers, rest if length < 0 else rest[:length])


def request_head(method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes, host: bytes = b"gateway") -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1", "replace"), b"Host: " + host]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def assert_refused_cleanly(reply: Reply | None, method: str = "POST") -> None:
    if reply is None:
        return  # HAProxy hung up on a request it could not parse
    assert reply.status < 500, (reply.status, reply.body[:300])
    assert MARKER.encode() not in reply.body
    if reply.status >= 400 and reply.from_gateway and method != "HEAD":  # HEAD answers carry no body
        error = httpx.Response(reply.status, content=reply.body).json()
        assert error.get("message") or error.get("error"), reply.body[:300]
    elif reply.status >= 400:
        assert 400 <= reply.status < 500, reply  # HAProxy's own refusal of a malformed request


@pytest.fixture(scope="module")
def port(stack) -> int:
    return stack.config["port"]


@pytest.fixture(scope="module")
def before(stack) -> dict:
    """What must be unchanged at the end: serving processes, registered models and workers."""
    status = stack.status()
    return {
        "processes": sorted((process.role, process.pid) for process in stack_processes(status)),
        "registrations": management_view(stack),
    }


def management_view(stack) -> dict[str, list]:
    """Each pool's registered models and their workers, straight from TorchServe's management API."""
    view = {}
    for pool in stack.status()["pools"]:
        name = pool["name"]
        url = f"http://127.0.0.1:{stack.config['pools'][name]['local']['management_port']}/models/resnet18"
        answer = httpx.get(url, headers=pool_key(pool, "management"), trust_env=False, timeout=10).json()
        view[name] = [(model["modelVersion"], [worker["id"] for worker in model["workers"]]) for model in answer]
    return view


# --- schema-driven: schemathesis on the live stack ---------------------------------------------

# The document the session stack serves (its config is the bundled one); the first test
# checks that, so the cases below are generated from what the live gateway publishes.
DOCUMENT = openapi.document(parse_config(stack_config()), keys_required=False)
live_schema = schemathesis.openapi.from_dict(DOCUMENT)
live_schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=12)
rejection = live_schema.config.checks.negative_data_rejection  # 413 refuses too: e.g. a v2 shape of 10^8 images
rejection.expected_statuses = [*rejection.expected_statuses, "413"]


def test_a_silent_client_is_dropped_after_a_minute_not_an_hour(stack):
    """Ray writes HAProxy's config with `timeout client 3600s`: an hour per slow-header
    client holding a connection slot. The stack passes the gateway's client_timeout_s."""
    (config_file,) = StatePaths(stack.state_dir).haproxy.glob("*/haproxy.cfg")
    timeouts = [line.split() for line in config_file.read_text().splitlines() if line.strip().startswith("timeout client")]
    assert timeouts == [["timeout", "client", f"{stack.config.get('client_timeout_s', 60)}s"]]


def test_the_live_gateway_serves_its_openapi_document(stack, before):
    with stack.client() as client:
        assert client.get("/openapi.json").json() == DOCUMENT


@live_schema.parametrize()
def test_live_gateway_conforms_to_its_openapi_document(case, stack, before):
    session = requests.Session()
    session.trust_env = False  # never through an environment proxy
    response = case.call(base_url=stack.url, session=session)
    if response.status_code == 400 and response.headers.get("content-type") == "text/html":
        # HAProxy's own refusal of a head it cannot parse (a generated header name that is not an
        # HTTP token, say), answered before any errorfile or the gateway: README, "What listens where".
        return
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


# --- property-based, over the wire -------------------------------------------------------------

def quoted(path: str) -> str:
    """A request target HAProxy will parse: anything outside printable ASCII percent-encoded."""
    return urllib.parse.quote(path, safe="/%?#[]@!$&'()*+,;=:-._~") or "/"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=METHODS,
    path=PATHS,
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"x-sla-tier", b"authorization", b"x-request-id", b"content-type", b"cookie", b"x-forwarded-for"]),
            HEADER_VALUES,
        ),
        max_size=6,
    ),
    body=BODIES,
    raw_target=st.booleans(),
)
def test_hostile_requests_over_the_wire_never_get_a_5xx(port, before, method, path, headers, body, raw_target):
    headers = [(name, value) for name, value in headers if name not in FRAMING]
    target = path if raw_target else quoted(path)
    assert_refused_cleanly(exchange(port, request_head(method, target, headers, body), body), method)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X-SLA-Tier", b"premium"), (b"X-SLA-Tier", b"gold")],
        [(b"X-SLA-Tier", MARKER.encode() * 400)],
        [(b"X-Request-ID", b"a" * 10_000)],
        [(b"X-Request-ID", b"id\x01\x02\x7f")],
        [(b"Authorization", b"Bearer " + MARKER.encode() * 300)],
        [(b"Content-Type", b"image/jpeg"), (b"Content-Type", b"application/json")],
        [(b"Content-Type", b"text/html; charset=\x00")],
        [(b"X-SLA-Tier", b"premium\r\nX-Injected: 1")],
        [(b"X-Big-" + str(n).encode(), b"v" * 1000) for n in range(40)],
    ],
)
def test_absurd_and_duplicated_headers(port, before, headers):
    body = SMALL_IMAGES[0]
    assert_refused_cleanly(exchange(port, request_head("POST", PREDICT, headers, body), body))


@pytest.mark.parametrize(
    "name, value",
    [(b"X-Request-ID", b"caf\xe9"), (b"X-Request-Timeout-Seconds", b"0.001"), (b"X-Request-Timeout-Seconds", b"\xb2"),
     (b"X-Request-Disconnect-Disabled", b"\xb2"), (b"X-Session-ID", b"\xb2"), (b"serve_multiplexed_model_id", b"\xb2")],
)
def test_headers_ray_serve_would_obey_or_choke_on_change_nothing(port, before, name, value):
    """Ray Serve read these itself: a bare 500 for bytes that are not UTF-8, a 408 after 1 ms."""
    body = cat_jpeg()
    reply = exchange(port, request_head("POST", PREDICT, [(name, value)], body), body)
    assert reply is not None and reply.status == 200, reply


@pytest.mark.parametrize(
    "head",
    [
        b"POST /predictions/resnet18 HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"POST /predictions/resnet18 HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST /predictions/resnet18 HTTP/1.1\r\nHost: g\r\nContent-Length: -1\r\n\r\n",
        b"POST /predictions/resnet18 HTTP/1.1\r\nHost: g\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /predictions/resnet18 HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: g\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",  # TLS to a plain-text port
    ],
)
def test_malformed_framing_is_a_4xx(port, before, head):
    assert_refused_cleanly(exchange(port, head, timeout_s=15))


def test_a_client_that_stops_mid_body_does_not_hurt_anyone(stack, port, before):
    body = cat_jpeg()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request_head("POST", PREDICT, [], body) + body[: len(body) // 3])
    with stack.client() as client:
        assert client.post(PREDICT, content=body).status_code == 200


# --- images: bombs and broken files, at the gateway and at the pools themselves ------------------

def zero_png(side: int) -> bytes:
    """A real decompression bomb within the limits: side x side pixels in a few kilobytes."""
    return encoded((side, side), "PNG")


BOMBS = [png_declaring(50_000, 50_000), jpeg_declaring(65_000, 65_000), png_declaring(10_000, 10_000),
         png_declaring(40_000, 1_001), png_declaring(1, 2_000)]


@pytest.mark.parametrize("bomb", BOMBS, ids=["png-50k", "jpeg-65k", "png-10k", "png-wide", "png-tall"])
def test_declared_bombs_are_refused_by_the_gateway_and_by_each_pool(stack, before, bomb):
    with stack.client() as client:
        refused = client.post(PREDICT, content=bomb, headers={"X-SLA-Tier": "premium"})
        assert refused.status_code == 400 and "pixels" in refused.json()["message"]
        for pool in stack.status()["pools"]:  # the pools' own limits, should anything bypass the gateway
            direct = client.post(pool["inference_url"] + PREDICT, content=bomb, headers=pool_key(pool, "inference"))
            assert direct.status_code == 400 and "pixels" in direct.json()["message"], direct.text


def test_images_that_decode_badly_are_400_from_the_pools(stack, before):
    photo = encoded((640, 480), "JPEG", quality=95)
    noisy = io.BytesIO()
    Image.effect_noise((400, 300), 80).save(noisy, format="PNG")
    broken = [photo[: len(photo) // 2], noisy.getvalue()[: len(noisy.getvalue()) // 3], b"\xff\xd8\xff" + MARKER.encode() * 30]
    with stack.client() as client:
        for tier in ("premium", "standard"):
            for body in broken:
                answer = client.post(PREDICT, content=body, headers={"X-SLA-Tier": tier})
                assert answer.status_code == 400, answer.text
                assert MARKER not in answer.text
            assert client.post(PREDICT, content=zero_png(3000), headers={"X-SLA-Tier": tier}).status_code == 200


# --- TorchServe's management API is never reachable through the gateway -------------------------

TRAVERSALS = [
    "/models", "/models/resnet18", "/models/resnet18/1.0", "/../models", "/%2e%2e/models", "/%2E%2E/models",
    "/predictions/../models", "/predictions/..%2fmodels", "/predictions/resnet18/..%2f..%2fmodels",
    "/predictions/resnet18/../../models", "/predictions/%2e%2e/%2e%2e/models", "//models", "///models/resnet18",
    "/./models", "/models?min_worker=0", "/models/resnet18?min_worker=0&synchronous=true", "/api-description",
    "/predictions/resnet18/..", "/predictions/resnet18/%2e%2e", "/predictions/resnet18/1.0%2f..%2f..%2fmodels",
    "/v2/models/resnet18/versions/..%2f..%2f..%2fmodels/infer", "/v1/models/resnet18",
]


def test_the_management_api_is_unreachable_through_the_gateway(stack, port, before):
    management_ports = [pool["local"]["management_port"] for pool in stack.config["pools"].values()]
    attempts = [(method, target, b"gateway") for target in TRAVERSALS for method in ("GET", "PUT", "DELETE", "POST", "OPTIONS")]
    for management in management_ports:
        authority = f"127.0.0.1:{management}".encode()
        attempts += [
            ("GET", f"http://127.0.0.1:{management}/models", authority),  # absolute-form request targets
            ("PUT", f"http://127.0.0.1:{management}/models/resnet18?min_worker=0", authority),
            ("DELETE", f"http://127.0.0.1:{management}/models/resnet18/1.0", authority),
            ("POST", f"http://localhost:{management}/models?url=resnet18-int8.mar", b"localhost"),
            ("GET", "/models", authority),  # Host header games
            ("DELETE", "/models/resnet18/1.0", authority),
            ("CONNECT", f"127.0.0.1:{management}", authority),
        ]
    overrides = [(b"X-Original-URL", b"/models"), (b"X-Rewrite-URL", b"/models"), (b"X-Forwarded-Host", b"127.0.0.1:8081")]
    for method, target, host in attempts:
        reply = exchange(port, request_head(method, target, overrides, b"", host=host), timeout_s=15)
        if reply is None:
            continue  # HAProxy hung up on it: refused
        if (method, target) == ("GET", "/api-description"):  # TorchServe's API description: the gateway's own
            assert reply.status == 200 and b'"title":"tiergate"' in reply.body, (reply.status, reply.body[:200])
        else:
            assert 400 <= reply.status < 500, (method, target, reply.status, reply.body[:200])
        assert not any(word in reply.body for word in TORCHSERVE_MANAGEMENT_WORDS), (method, target, reply.body[:300])
    assert management_view(stack) == before["registrations"]


# --- afterwards: nothing crashed, everything serves, no log holds the payload --------------------

def test_no_process_crashed_or_restarted_and_the_pools_still_serve(stack, before):
    now = sorted((process.role, process.pid) for process in stack_processes(stack.status()))
    assert now == before["processes"]
    assert management_view(stack) == before["registrations"]
    with stack.client() as client:
        for tier in ("premium", "standard", "batch"):
            assert client.post(PREDICT, content=cat_jpeg(), headers={"X-SLA-Tier": tier}).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_no_log_of_the_stack_contains_the_planted_payload(stack, before):
    marked = [
        encoded((64, 64), "JPEG", comment=MARKER.encode()),  # served: a comment the decoder reads past
        b"\xff\xd8\xff" + MARKER.encode() * 100,  # refused by the pool's decoder
        b"\x89PNG\r\n\x1a\n" + MARKER.encode() * 100,
        MARKER.encode() * 100,  # refused by the gateway
    ]
    with stack.client() as client:
        for body in marked:
            for tier in ("premium", "standard", MARKER):
                client.post(PREDICT, content=body, headers={"X-SLA-Tier": tier, "Authorization": f"Bearer {MARKER}",
                                                            "X-Note": MARKER})
    time.sleep(2)  # TorchServe's and Ray's log writers are asynchronous
    supervisor = stack.status()["supervisor_pid"]
    pools = stack.state_dir / "pools"
    logs = [stack.state_dir / "supervisor.log", *pools.glob("*/stdout.log"), *pools.glob("*/logs/*")]
    logs += [path for path in Path("/tmp/ray").glob(f"session_*_{supervisor}/logs/**/*") if path.is_file()]
    assert len(logs) > 10 and any(path.name == "model_log.log" for path in logs), logs
    leaking = [str(path) for path in logs if MARKER.encode() in path.read_bytes()]
    assert leaking == []
