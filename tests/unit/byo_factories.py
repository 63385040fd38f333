"""Tiny model factories for tests/unit/test_model_byo.py: each builds in a few seconds."""

from __future__ import annotations

import json

import torch
from torch import nn

from model.sources import ModelData, ModelSource

FEATURES, CLASSES = 16, 4


def _rows(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, FEATURES, generator=torch.Generator().manual_seed(seed))


def _rule(rows: torch.Tensor) -> torch.Tensor:
    """The class a row belongs to: which quarter of its features sums largest."""
    return rows.unflatten(1, (CLASSES, -1)).sum(2).argmax(1)


def tiny_mlp() -> ModelSource:
    """An MLP trained to the rule above; held-out rows with labels."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    train = _rows(2048, 1)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(module(train), _rule(train))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = _rows(256, 2)
    data = ModelData(list(train[:128].split(32)), held_out, _rule(held_out), description="rows of the rule")
    return ModelSource(module.eval(), held_out[:2], data, class_names=[f"q{i}" for i in range(CLASSES)])


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def tiny_cnn() -> tuple[nn.Module, torch.Tensor]:
    """A (module, example) pair with no data: the build calibrates and checks on random inputs."""
    torch.manual_seed(0)
    return TinyCnn().eval(), torch.randn(2, 1, 8, 8)


def tiny_regressor() -> ModelSource:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 3))
    return ModelSource(module.eval(), _rows(2, 3), ModelData([_rows(32, 4)], _rows(64, 5), description="random rows"))


class DataDependent(nn.Module):
    """Branches on a value torch.export cannot know while tracing."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


def untraceable() -> tuple[nn.Module, torch.Tensor]:
    return DataDependent().eval(), _rows(2, 6)


def wrong_shape_data() -> ModelData:
    """Calibration rows one feature short of what tiny_mlp takes."""
    return ModelData([torch.randn(8, FEATURES - 1)], _rows(16, 7))


def failing_factory() -> ModelSource:
    raise RuntimeError("the weights server is down")


def tiny_data() -> ModelData:
    """Held-out rows of the rule, for a program that brings no data."""
    held_out = _rows(128, 8)
    return ModelData([_rows(32, 9)], held_out, _rule(held_out), description="rows of the rule")


class BagOfWords(nn.Module):
    def __init__(self, vocabulary: int):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 8, padding_idx=0)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = (ids != 0).unsqueeze(-1).float()
        return self.head((self.embed(ids) * real).sum(1) / real.sum(1).clamp(min=1.0))


def tiny_text() -> ModelSource:
    """A text classifier (random weights) with the vocabulary the handler tokenizes with."""
    from torchserve_backend.tiergate_text import Tokenizer

    tokenizer = Tokenizer.from_words(["good", "bad", "not", "film", "food"], max_length=16)
    vocab = json.dumps({"tokens": tokenizer.tokens, "max_length": tokenizer.max_length}).encode()
    torch.manual_seed(0)
    texts = ["good film", "not good food", "bad", "the film was bad", "good good food"] * 4
    evaluation = tokenizer.batch(texts)
    return ModelSource(
        BagOfWords(len(tokenizer.tokens)).eval(), evaluation[:2], ModelData([evaluation[:8]], evaluation),
        class_names=["negative", "positive"], extra_files={"vocab.json": vocab},
    )  # fmt: skip
