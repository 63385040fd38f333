"""Real photographs that ship inside installed packages, for calibration and checks.

No network access is needed: scikit-image, scikit-learn and matplotlib bundle a
handful of photos.  Photos are split in two disjoint halves (calibration vs
evaluation) and expanded with seeded random crops and flips, so a build sees
the same images every time.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from PIL import Image

# (package, path inside the package) of natural photos; synthetic test patterns,
# text pages and binary masks in those folders are left out on purpose.
BUNDLED_PHOTOS = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/rocket.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


def package_dir(package: str) -> Path:
    """Locate a package without importing it (importing skimage/matplotlib is slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed; it ships the sample photos")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_photo_paths() -> list[Path]:
    return [package_dir(package) / relative for package, relative in BUNDLED_PHOTOS]


def load_photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def split_photos(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Alternate photos into (calibration, evaluation) so the two never share a photo."""
    return paths[0::2], paths[1::2]


def random_views(photo: Image.Image, count: int, rng: random.Random) -> list[Image.Image]:
    """Seeded random crops (10-100% of the area, any aspect within 3:4..4:3), some mirrored."""
    width, height = photo.size
    views = []
    for _ in range(count):
        area = width * height * rng.uniform(0.1, 1.0)
        aspect = rng.uniform(3 / 4, 4 / 3)
        crop_w = min(width, max(16, int(round((area * aspect) ** 0.5))))
        crop_h = min(height, max(16, int(round((area / aspect) ** 0.5))))
        left = rng.randint(0, width - crop_w)
        top = rng.randint(0, height - crop_h)
        view = photo.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(view)
    return views


def photo_views(paths: list[Path], views_per_photo: int, seed: int) -> list[Image.Image]:
    """Each photo whole plus views_per_photo random views of it."""
    rng = random.Random(seed)
    images = []
    for path in paths:
        photo = load_photo(path)
        images.append(photo)
        images.extend(random_views(photo, views_per_photo, rng))
    return images
