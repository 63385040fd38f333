"""Ray Serve's ingress reads some request headers itself before the gateway sees the request:
decoded as UTF-8 (a bare 500 when that fails) and obeyed (per-request timeout, disconnect
handling, session and multiplexing routing). The gateway's ingress middleware, wrapped by
Ray's own machinery here, leaves Ray nothing to choke on or obey."""

from __future__ import annotations

import asyncio
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from ray.serve._private.http_util import (
    _apply_middlewares,
    parse_disconnect_disabled_header,
    parse_request_timeout_header,
    parse_session_id_header,
    validate_http_proxy_callback_return,
)

from gateway.admit import REQUEST_ID, ingress_middlewares

from .inputs import HEADER_VALUES

NAMES = st.one_of(
    st.sampled_from([
        b"x-request-id", b"x-request-timeout-seconds", b"x-request-disconnect-disabled", b"x-session-id",
        b"x_session_id", b"serve_multiplexed_model_id", b"serve-multiplexed-model-id", b"x-sla-tier", b"content-type",
    ]),
    # Header names are tokens: HAProxy and the HTTP parsers refuse anything else.
    st.text(string.ascii_lowercase + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=20).map(str.encode),
)


def through_the_ingress(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], list]:
    """The headers the deployment receives and the response headers the client gets, with the
    middleware applied exactly as Ray Serve applies an ingress callback's list."""
    seen: list = []
    sent: list = []

    async def deployment(scope, receive, send):
        seen.extend(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    app = _apply_middlewares(deployment, validate_http_proxy_callback_return(ingress_middlewares()))
    scope = {"type": "http", "method": "POST", "path": "/predictions/resnet18", "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    return seen, sent[0]["headers"]


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(NAMES, HEADER_VALUES), max_size=8))
def test_ray_serve_never_sees_a_header_to_obey_or_to_choke_on(headers):
    seen, response_headers = through_the_ingress(headers)
    as_dict = dict(seen)
    parse_disconnect_disabled_header(as_dict)  # Ray Serve's own parsing: must not raise
    assert parse_request_timeout_header(as_dict, 30.0) == 30.0
    assert parse_session_id_header(as_dict) == ""
    assert not [name for name, _ in seen if name.replace(b"-", b"_") == b"serve_multiplexed_model_id"]
    request_ids = [value for name, value in seen if name == b"x-request-id"]
    assert len(request_ids) >= 1 and all(REQUEST_ID.fullmatch(value.decode()) for value in request_ids)
    echoed = [value for name, value in response_headers if name.lower() == b"x-request-id"]
    assert all(REQUEST_ID.fullmatch(value.decode()) for value in echoed)
    others = [(n, v) for n, v in headers if n != b"x-request-id" and n.replace(b"-", b"_") not in {
        b"x_request_timeout_seconds", b"x_request_disconnect_disabled", b"x_session_id", b"serve_multiplexed_model_id"}]
    assert [(n, v) for n, v in seen if n != b"x-request-id"] == others  # everything else passes untouched


def test_a_sane_request_id_passes_and_comes_back():
    seen, response_headers = through_the_ingress([(b"x-request-id", b"order-42:retry.1")])
    assert seen == [(b"x-request-id", b"order-42:retry.1")]
    assert (b"X-Request-ID", b"order-42:retry.1") in response_headers or (b"x-request-id", b"order-42:retry.1") in response_headers
