"""The quality figures of a built model against its fp32 reference, and the gates they must pass.

Classifiers are judged by top-1 agreement with fp32 (and top-1 accuracy where the evaluation
data has labels); regressors and embeddings by the largest absolute error, the relative error
‖candidate − fp32‖ / ‖fp32‖ and the mean cosine similarity of their outputs.
"""

from __future__ import annotations

import torch

from model.agreement import compare_logits, top1_accuracy

# gate → (figure it bounds, whether the figure must stay at or above it)
GATE_FIGURES = {
    "min_top1_agreement": ("top1_agreement", True),
    "min_accuracy": ("top1_accuracy", True),
    "max_abs_error": ("max_abs_error", False),
    "max_rel_error": ("rel_error", False),
    "min_cosine": ("cosine", True),
}


def output_figures(reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """Every figure a gate may bound, for one variant's outputs against fp32's."""
    reference, candidate = reference.float(), candidate.float()
    figures = {
        "max_abs_error": (candidate - reference).abs().max().item(),
        "rel_error": ((candidate - reference).norm() / reference.norm().clamp(min=1e-12)).item(),
        "cosine": torch.nn.functional.cosine_similarity(reference.flatten(1), candidate.flatten(1)).mean().item(),
    }
    if reference.dim() == 2 and reference.shape[1] > 1:
        figures["top1_agreement"] = compare_logits(reference, candidate)["top1_agreement"]
        if labels is not None:
            figures["top1_accuracy"] = top1_accuracy(candidate, labels)
    return figures


def gate_failures(variant_figures: dict[str, dict], gates: dict[str, float | None]) -> list[str]:
    """One message per variant figure on the wrong side of its gate, naming both values."""
    failures = []
    for gate, bound in gates.items():
        if bound is None:
            continue
        figure, at_least = GATE_FIGURES[gate]
        for variant, figures in variant_figures.items():
            if figure not in figures:
                failures.append(f"{variant} {figure} cannot be measured for gate {gate} (no labels or not a classifier)")
            elif (figures[figure] < bound) if at_least else (figures[figure] > bound):
                relation = "below the minimum" if at_least else "above the maximum"
                failures.append(f"{variant} {figure} {figures[figure]:.4f} is {relation} {bound}")
    return failures
