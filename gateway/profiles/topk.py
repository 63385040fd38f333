"""Top-k answers of a classifier and how two of them are compared (shadow tests)."""

from __future__ import annotations

import orjson

from .base import Comparison, RowCountMismatch

TopK = dict[str, float]  # one image's most likely classes, most likely first


def parse_top_k(body: bytes, k: int) -> list[TopK]:
    """Per image, the k most likely classes of a pool's answer: the TorchServe API's
    `{class: probability}` (one image) or the Open Inference outputs `top5_probabilities`
    and `top5_labels` (N images), so both API surfaces can be shadowed."""
    answer = orjson.loads(body)
    if isinstance(answer, dict) and isinstance(answer.get("outputs"), list):
        return _open_inference_top_k(answer["outputs"], k)
    return [_top_k(answer, k)]


def _top_k(answer: object, k: int) -> TopK:
    if not isinstance(answer, dict) or not answer:
        raise ValueError("expected a non-empty {class: probability} object")
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in answer.values()):
        raise ValueError("probabilities must be numbers")
    ranked = sorted(answer.items(), key=lambda item: (-item[1], item[0]))
    return {label: float(p) for label, p in ranked[:k]}


def _open_inference_top_k(outputs: list, k: int) -> list[TopK]:
    named = {output.get("name"): output for output in outputs if isinstance(output, dict)}
    probabilities, labels = named.get("top5_probabilities"), named.get("top5_labels")
    if probabilities is None or labels is None:
        raise ValueError("expected the outputs top5_probabilities and top5_labels")
    shape = probabilities.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and shape == labels.get("shape")):
        raise ValueError("top5_probabilities and top5_labels must share a [N, k] shape")
    rows, width = shape
    values, names = probabilities.get("data"), labels.get("data")
    if not (isinstance(values, list) and isinstance(names, list) and len(values) == len(names) == rows * width):
        raise ValueError("output data does not match its shape")
    answers = []
    for row in range(rows):
        answer: dict = {}
        for label, probability in zip(names[row * width:(row + 1) * width], values[row * width:(row + 1) * width]):
            answer.setdefault(str(label), probability)  # ImageNet names a few classes twice
        answers.append(_top_k(answer, k))
    return answers


def compare_one(primary: TopK, other: TopK, tolerance: float) -> Comparison:
    """Compare two top-k answers.

    A class listed by one side only has, on the other side, a probability somewhere
    below that side's last listed one; its delta is the smallest difference consistent
    with that (0 when it could be equal), so truncation is never blamed on a model.
    """
    primary_floor, other_floor = min(primary.values()), min(other.values())
    deltas = {}
    for label in primary.keys() | other.keys():
        if label in primary and label in other:
            deltas[label] = abs(primary[label] - other[label])
        elif label in primary:
            deltas[label] = max(0.0, primary[label] - other_floor)
        else:
            deltas[label] = max(0.0, other[label] - primary_floor)
    return Comparison(
        top1_same=next(iter(primary)) == next(iter(other)),
        overlap=len(primary.keys() & other.keys()) / max(len(primary), len(other)),
        max_delta=max(deltas.values()),
        tolerance=tolerance,
        deltas=deltas,
    )


def compare_top_k(primary: list[TopK], other: list[TopK], tolerance: float) -> Comparison:
    """Compare answers image by image; a batch agrees only as far as its worst image does."""
    if len(primary) != len(other):
        raise RowCountMismatch(f"answers for {len(primary)} and {len(other)} images")
    if len(primary) == 1:
        return compare_one(primary[0], other[0], tolerance)
    each = [compare_one(mine, theirs, tolerance) for mine, theirs in zip(primary, other)]
    return Comparison(
        top1_same=all(c.top1_same for c in each),
        overlap=min(c.overlap for c in each),
        max_delta=max(c.max_delta for c in each),
        tolerance=tolerance,
        deltas={f"{image}:{label}": delta for image, c in enumerate(each) for label, delta in c.deltas.items()},
    )
