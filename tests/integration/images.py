"""Real photos (shipped by installed packages) encoded the way clients send them."""

from __future__ import annotations

import io

from PIL import Image

from model.photos import load_photo, package_dir


def cat_jpeg() -> bytes:
    """scikit-image's Chelsea the cat, as a JPEG: the README's `cat.jpg`."""
    buffer = io.BytesIO()
    load_photo(package_dir("skimage") / "data/chelsea.png").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def solid_png(colour: tuple[int, int, int], size: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def distinct_pngs(count: int, seed: int = 0) -> list[bytes]:
    """Different images (so coalescing cannot merge them), cheap to decode."""
    import random

    rng = random.Random(seed)
    return [solid_png((rng.randrange(256), rng.randrange(256), rng.randrange(256)), size=64) for _ in range(count)]
