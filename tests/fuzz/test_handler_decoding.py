"""The TorchServe handler's image decoder under hostile bytes: every input is either a
(3, 224, 224) model input or InvalidInput (a 400), never another exception (a 500 and a
worker traceback), and nothing over the pixel limit is ever decoded."""

from __future__ import annotations

import io
import time

import pytest
from hypothesis import HealthCheck, given, settings
from PIL import Image

from torchserve_backend.handler import InvalidInput, decode_image, preprocess_image

from .inputs import BODIES, encoded, jpeg_declaring, png_declaring

LIMIT = 1_000_000


def decoded_or_refused(payload) -> None:
    try:
        tensor = preprocess_image(decode_image(payload, LIMIT))
    except InvalidInput as error:
        assert str(error)
        return
    assert tuple(tensor.shape) == (3, 224, 224)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=BODIES)
def test_any_body_decodes_or_is_invalid_input(payload):
    decoded_or_refused(payload)


@pytest.mark.parametrize(
    "bomb",
    [png_declaring(50_000, 50_000), jpeg_declaring(65_000, 65_000), png_declaring(10_000, 10_000),
     png_declaring(2**31 - 1, 1),
     png_declaring(1001, 1000), png_declaring(0, 10), png_declaring(1, 2000), jpeg_declaring(10, 0)],
)
def test_declared_bombs_are_refused_from_the_header_alone(bomb, recwarn):
    started = time.perf_counter()
    with pytest.raises(InvalidInput):
        decode_image(bomb, LIMIT)
    assert time.perf_counter() - started < 0.5
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]  # no log line


def test_a_real_bomb_within_the_pixel_limit_decodes_in_bounded_memory():
    """1000x1000 zeros compress to ~1 KB of PNG: legal, decoded at its declared size only."""
    bomb = encoded((1000, 1000), "PNG")
    assert len(bomb) < 10_000
    image = decode_image(bomb, LIMIT)
    assert image.size == (1000, 1000) and image.mode == "RGB"


def test_truncated_real_images_are_invalid_input():
    photo = encoded((300, 200), "JPEG", quality=95)
    for cut in (3, 20, 200, len(photo) // 2, len(photo) - 2):
        with pytest.raises(InvalidInput):
            decode_image(photo[:cut], LIMIT)
    noisy = io.BytesIO()
    Image.effect_noise((300, 200), 60).save(noisy, format="PNG")
    with pytest.raises(InvalidInput):
        decode_image(noisy.getvalue()[: len(noisy.getvalue()) // 2], LIMIT)
    assert Image.open(io.BytesIO(photo)).size == (300, 200)
