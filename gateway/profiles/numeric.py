"""Comparing numeric answers (tensors, numbers inside JSON documents) for shadow tests:
elementwise within atol + rtol·|primary|, and cosine similarity of the whole."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import ShadowCompare
from .base import Comparison


def compare_numbers(
    primary: dict[str, Any], other: dict[str, Any], settings: ShadowCompare, check_cosine: bool
) -> Comparison:
    """Compare two flattened answers (path → number or other leaf). Non-numeric leaves must be
    equal and present on both sides; numbers agree within atol + rtol·|primary|, and, with
    `check_cosine`, the numbers' cosine similarity must reach `min_cosine`."""
    shared = primary.keys() & other.keys()
    overlap = len(shared) / max(len(primary.keys() | other.keys()), 1)
    same = shared == primary.keys() == other.keys()
    mine, theirs, deltas = [], [], {}
    for path in sorted(shared):
        a, b = primary[path], other[path]
        if _is_number(a) and _is_number(b):
            mine.append(float(a))
            theirs.append(float(b))
            beyond = abs(float(a) - float(b)) - settings.rtol * abs(float(a))
            deltas[path] = max(0.0, beyond)
        elif a != b:
            same = False
            deltas[path] = float("inf")
    finite = [delta for delta in deltas.values() if delta != float("inf")]
    max_delta = max(finite, default=0.0)
    if check_cosine and mine:
        same = same and cosine(np.asarray(mine), np.asarray(theirs)) >= settings.min_cosine
    return Comparison(
        top1_same=same,
        overlap=overlap,
        max_delta=max_delta,
        tolerance=settings.atol,
        deltas={path: delta for path, delta in deltas.items() if delta > settings.atol},
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)


def flatten(document: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON document as path → leaf (`a.b[2]`), so two answers are compared leaf by leaf."""
    if isinstance(document, dict):
        if not document:
            return {prefix: {}}
        leaves: dict[str, Any] = {}
        for key, value in document.items():
            leaves.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    if isinstance(document, list):
        if not document:
            return {prefix: []}
        leaves = {}
        for index, value in enumerate(document):
            leaves.update(flatten(value, f"{prefix}[{index}]"))
        return leaves
    return {prefix: document}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
