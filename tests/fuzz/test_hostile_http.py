"""Property-based fuzzing of the HTTP surface in-process: whatever arrives (methods, paths,
headers, bodies), the answer is a 200 or a JSON 4xx, never a 5xx; nothing planted in the
request comes back; bad input never reaches a pool; the gateway keeps serving."""

from __future__ import annotations

import io
import itertools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.auth import digest
from gateway.profiles import image_classifier

from .harness import Gateway, assert_client_fault_answer
from .inputs import (
    BODIES,
    HEADER_VALUES,
    HEADERS,
    METHODS,
    PATHS,
    PREDICT,
    SMALL_IMAGES,
    encoded,
    jpeg_declaring,
    png_declaring,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = "fuzz-key"


@pytest.fixture(scope="module")
def gateway():
    running = Gateway()
    yield running
    running.close()


@pytest.fixture(scope="module")
def keyed_gateway():
    running = Gateway(auth={"keys": [{"name": "fuzz", "sha256": digest(KEY), "tiers": ["premium"]}]})
    yield running
    running.close()


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
    return [body[a:b] for a, b in itertools.pairwise(points)] or [b""]


@FUZZ
@given(method=METHODS, path=PATHS, headers=HEADERS, body=BODIES, cuts=st.lists(st.integers(0, 10**6), max_size=3))
def test_anything_gets_a_json_4xx_or_a_200_never_a_5xx(gateway, method, path, headers, body, cuts):
    answer = gateway.call(method, path, headers, split(body, cuts))
    assert_client_fault_answer(answer, path)


@FUZZ
@given(headers=HEADERS, body=BODIES)
def test_predict_with_hostile_headers_and_bodies(gateway, headers, body):
    before = len(gateway.pool.bodies_seen)
    answer = gateway.call("POST", PREDICT, headers, [body])
    assert_client_fault_answer(answer)
    reached_pool = len(gateway.pool.bodies_seen) > before
    if reached_pool:
        assert body.startswith(image_classifier.IMAGE_MAGIC)  # only image-looking bodies cost a pool anything
    if answer.status == 200:
        assert reached_pool and answer.json() == {"tabby": 0.6, "tiger_cat": 0.3}


@FUZZ
@given(headers=HEADERS, authorization=HEADER_VALUES)
def test_api_keys_refuse_anything_but_the_key(keyed_gateway, headers, authorization):
    headers = [(name, value) for name, value in headers if name.lower() != b"authorization"]
    answer = keyed_gateway.call("POST", PREDICT, headers + [(b"authorization", authorization)], [SMALL_IMAGES[0]])
    assert_client_fault_answer(answer)
    assert answer.status == 401 or authorization.strip() == b"Bearer " + KEY.encode()


@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1), kind=st.sampled_from(["png", "jpeg"]))
def test_declared_dimensions_over_the_limits_never_reach_a_pool(gateway, width, height, kind):
    if kind == "jpeg":
        width, height = width % 65536, height % 65536
    body = png_declaring(width, height) if kind == "png" else jpeg_declaring(width, height)
    before = len(gateway.pool.bodies_seen)
    answer = gateway.call("POST", PREDICT, [(b"content-type", b"image/" + kind.encode())], [body])
    assert_client_fault_answer(answer)
    too_big = width * height > image_classifier.MAX_IMAGE_PIXELS
    lopsided = min(width, height) == 0 or max(width, height) > image_classifier.MAX_ASPECT_RATIO * min(width, height)
    if too_big or lopsided:
        assert answer.status == 400 and "pixels" in answer.json()["message"]
        assert len(gateway.pool.bodies_seen) == before
    else:
        assert len(gateway.pool.bodies_seen) == before + 1


@settings(max_examples=200, deadline=None)
@given(
    size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    fmt=st.sampled_from(["JPEG", "PNG"]),
    mode=st.sampled_from(["RGB", "L", "CMYK", "RGBA", "P"]),
    progressive=st.booleans(),
    exif=st.booleans(),
)
def test_declared_size_agrees_with_pillow(size, fmt, mode, progressive, exif):
    assume(not (fmt == "JPEG" and mode in ("RGBA", "P")) and not (fmt == "PNG" and mode == "CMYK"))
    options = {"progressive": progressive, "exif": Image.Exif()} if fmt == "JPEG" and exif else {}
    body = encoded(size, fmt, mode, **options)
    assert image_classifier.declared_size(body) == Image.open(io.BytesIO(body)).size == size


@pytest.mark.parametrize(
    "content_length, status",
    [("12", 400), ("-1", 400), ("1e3", 400), ("0x10", 400), ("\xb2", 400), (" 5", 400),
     ("9" * 5000, 413), ("0" * 5000, 413), ("262145", 413)],
)
def test_absurd_content_length_is_a_4xx(gateway, content_length, status):
    answer = gateway.call(
        "POST", PREDICT, [(b"content-length", content_length.encode("latin-1", "replace"))], [b"not an image"]
    )
    assert_client_fault_answer(answer)
    assert answer.status == status


def test_a_client_gone_mid_body_is_a_4xx_not_a_crash(gateway):
    answer = gateway.call("POST", PREDICT, [], [SMALL_IMAGES[0][:50]], disconnect=True)
    assert_client_fault_answer(answer)
    assert answer.status == 400


@pytest.mark.parametrize(
    "given, echoed",
    [(b"abc-123", True), (b"abc-123\n", False), (b"a\x00b", False), (b"x" * 129, False), (b"x" * 10_000, False),
     (b"caf\xe9", False), (b"", False)],
)
def test_request_id_is_echoed_only_when_sane(gateway, given, echoed):
    answer = gateway.call("GET", "/no-such-endpoint", [(b"x-request-id", given)])
    assert (answer.header("x-request-id") == given.decode("latin-1")) is echoed
    assert_client_fault_answer(answer)


def test_duplicated_headers_take_the_first_and_stay_4xx(gateway):
    answer = gateway.call(
        "POST", PREDICT,
        [(b"x-sla-tier", b"gold"), (b"x-sla-tier", b"premium"), (b"content-type", b"image/jpeg"),
         (b"content-type", b"application/json")],
        [SMALL_IMAGES[0]],
    )
    assert answer.status == 400 and "valid tiers" in answer.json()["message"]


@pytest.mark.parametrize(
    "version", ["..", ".", "..%2fmodels", "1.0?x=1", "1.0#x", "%2e%2e", "\x00", "a b", "é", "-1", "x" * 65]
)
def test_model_versions_that_could_steer_the_pool_url_are_404(gateway, version):
    before = len(gateway.pool.bodies_seen)
    answer = gateway.call("POST", f"{PREDICT}/{version}", [], [SMALL_IMAGES[0]])
    assert answer.status == 404 and answer.json()["type"] == "ModelNotFound"
    assert len(gateway.pool.bodies_seen) == before


def test_unknown_model_versions_are_404_and_never_open_the_breaker(gateway):
    for _ in range(10):  # twice what opens a breaker, were they counted as pool failures
        answer = gateway.call("POST", f"{PREDICT}/9.9", [(b"x-sla-tier", b"premium")], [SMALL_IMAGES[0]])
        assert answer.status == 404 and answer.json()["type"] == "ModelNotFound"
    assert gateway.call("POST", PREDICT, [(b"x-sla-tier", b"premium")], [SMALL_IMAGES[0]]).status == 200


def test_still_serving_after_the_fuzzing(gateway):
    for tier in (b"premium", b"standard", b"batch"):
        answer = gateway.call("POST", PREDICT, [(b"x-sla-tier", tier)], [SMALL_IMAGES[0]])
        assert answer.status == 200, answer.body
