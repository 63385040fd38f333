"""Compare a model variant's predictions with the fp32 reference."""

from __future__ import annotations

import torch


class AgreementError(RuntimeError):
    """A variant's top-1 agreement with fp32 fell below the configured threshold."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    """Top-1 agreement plus softer numerical measures of how close candidate is to reference.

    The softer measures matter for random-weight networks, whose logit margins
    are so small that top-1 flips even when the logits barely moved.
    """
    reference = reference.float()
    candidate = candidate.float()
    k = min(5, reference.shape[1])
    reference_top1 = reference.argmax(dim=1)
    reference_topk = reference.topk(k, dim=1).indices
    candidate_topk = candidate.topk(k, dim=1).indices
    topk_overlap = sum(
        len(set(r.tolist()) & set(c.tolist())) for r, c in zip(reference_topk, candidate_topk)
    ) / (k * len(reference))
    sorted_reference = reference.sort(dim=1, descending=True).values
    return {
        "samples": len(reference),
        "top1_agreement": (reference_top1 == candidate.argmax(dim=1)).float().mean().item(),
        "top5_overlap": topk_overlap,
        "reference_top1_in_candidate_top5": (candidate_topk == reference_top1[:, None])
        .any(dim=1)
        .float()
        .mean()
        .item(),
        "logit_cosine_similarity": torch.nn.functional.cosine_similarity(reference, candidate).mean().item(),
        "logit_relative_error": ((candidate - reference).norm() / reference.norm()).item(),
        "reference_median_top1_margin": (sorted_reference[:, 0] - sorted_reference[:, 1]).median().item(),
        "reference_distinct_top1": int(reference_top1.unique().numel()),
    }


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()
