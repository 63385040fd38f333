"""Hostile inputs shared by the fuzz tests and the live-stack hostile tests: bodies that
are random, image-looking, truncated, mutated or decompression bombs, and absurd headers."""

from __future__ import annotations

import io
import string
import struct
import zlib

from hypothesis import strategies as st
from PIL import Image

from gateway.profiles import image_classifier

# Bodies and headers carry this; it must never come back in an answer or reach a log.
MARKER = "ZQXJ-PLANTED-PAYLOAD-7f3a"
PREDICT = "/predictions/resnet18"


def encoded(size: tuple[int, int], fmt: str, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 90).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return image_classifier.PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG with its frame header rewritten to claim width x height pixels."""
    body = bytearray(encoded((8, 8), "JPEG"))
    frame = body.index(b"\xff\xc0")
    body[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(body)


SMALL_IMAGES = [
    encoded((32, 24), "JPEG"),
    encoded((40, 40), "PNG"),
    encoded((17, 33), "JPEG", progressive=True),
    encoded((16, 16), "PNG", mode="RGBA"),
    encoded((20, 20), "JPEG", mode="CMYK"),
    encoded((30, 10), "PNG", mode="P"),
]


@st.composite
def mutated_images(draw) -> bytes:
    body = bytearray(draw(st.sampled_from(SMALL_IMAGES)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(body) - 1))
        body[at] = draw(st.integers(0, 255))
    return bytes(body[: draw(st.integers(1, len(body)))])


BODIES = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=600).map(lambda tail: image_classifier.JPEG_MAGIC + tail),
    st.binary(max_size=600).map(lambda tail: image_classifier.PNG_MAGIC + tail),
    st.sampled_from(SMALL_IMAGES),
    mutated_images(),
    st.builds(png_declaring, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(jpeg_declaring, st.integers(0, 65535), st.integers(0, 65535)),
    st.just(image_classifier.JPEG_MAGIC + MARKER.encode() * 50),
)
HEADER_NAMES = st.one_of(
    st.sampled_from([
        b"x-sla-tier", b"authorization", b"x-request-id", b"content-type", b"content-length",
        b"transfer-encoding", b"host", b"expect", b"connection", b"cookie", b"x-forwarded-for",
    ]),
    st.binary(min_size=1, max_size=30),
)
HEADER_VALUES = st.one_of(
    st.sampled_from([
        b"premium", b"PREMIUM ", b"standard", b"batch", b"gold", b"", b"\x00", b"premium\r\nX-Evil: 1",
        b"image/jpeg", b"image/png; charset=binary", b"application/json", b"multipart/form-data; boundary=x",
        b"-1", b"1e9", b"0x10", b"\xb2", b"9" * 5000, b"chunked", b"100-continue",
        b"Bearer ", b"Bearer " + MARKER.encode(), b"Basic " + MARKER.encode(), b"abc-123\n", b"../../models",
    ]),
    st.binary(max_size=120),
    st.builds(lambda unit, times: unit * times, st.binary(min_size=1, max_size=4), st.integers(2500, 3000)),
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8)
METHODS = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND"]),
    st.text(string.ascii_letters, min_size=1, max_size=12),
)
SEGMENTS = st.one_of(
    st.sampled_from(["resnet18", "..", ".", "", "models", "%2e%2e", "resnet18?x=1", "resnet18#f", "1.0", "\x00"]),
    st.text(max_size=40),
)
PATHS = st.one_of(
    st.sampled_from([
        PREDICT, PREDICT + "/1.0", PREDICT + "/", "/healthz", "/readyz", "/metrics", "/openapi.json",
        "/models", "/models/resnet18", "//models", "/../models", "/predictions/../models",
        "/predictions/resnet18/../../models", "/predictions/resnet18/..", "/api-description", "/ping",
        "/v1/models/resnet18:predict", "/v2", "/v2/models/resnet18", "/v2/models/resnet18/infer",
        "/v2/models/resnet18/versions/../infer", "/v2/models/../../models", "http://127.0.0.1:8091/models",
    ]),
    st.builds(lambda segments: "/" + "/".join(segments), st.lists(SEGMENTS, max_size=5)),
    st.text(max_size=200),
)
