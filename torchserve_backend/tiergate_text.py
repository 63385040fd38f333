"""Text classifiers: ``{"text": "..."}`` in, ``{"label", "probabilities": {label: p}}`` out.

The tokenizer lives here, not in the build, so the words a model was trained on are split
exactly as served: lower case, runs of letters and digits (with an apostrophe tail, as in
"didn't"), looked up in the MAR's vocab.json; unknown words become <unk>, and a text is
cut at the model's max_length tokens.

Ships in the MAR as a top-level module beside handler.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

try:  # inside a MAR: TorchServe puts the model directory on the path, siblings are top-level
    from tiergate_backends import InvalidInput, request_payload
except ModuleNotFoundError:
    from torchserve_backend.tiergate_backends import InvalidInput, request_payload

VOCAB_FILE = "vocab.json"
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# The gateway's schema allows 2000 characters; the handler only bounds the work one body causes.
MAX_TEXT_CHARS = 100_000


class Tokenizer:
    def __init__(self, tokens: list[str], max_length: int):
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}")
        self.tokens = tokens
        self.max_length = max_length
        self._ids = {token: index for index, token in enumerate(tokens)}

    @classmethod
    def from_words(cls, words: list[str], max_length: int) -> Tokenizer:
        return cls([PAD, UNK] + sorted(set(words) - {PAD, UNK}), max_length)

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        saved = json.loads(Path(path).read_text())
        return cls(saved["tokens"], int(saved["max_length"]))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"tokens": self.tokens, "max_length": self.max_length}) + "\n")

    @staticmethod
    def words(text: str) -> list[str]:
        return WORD.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """Token ids, at most max_length; never empty (a text of no words is one <unk>)."""
        ids = [self._ids.get(word, UNK_ID) for word in self.words(text)[: self.max_length]]
        return ids or [UNK_ID]

    def batch(self, texts: list[str]) -> torch.Tensor:
        return pad([torch.tensor([self.encode(text)]) for text in texts])


def pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """(1, L_i) id rows → (N, max L_i), right-padded with <pad> (the model ignores it)."""
    longest = max(row.shape[1] for row in rows)
    return torch.cat([torch.nn.functional.pad(row, (0, longest - row.shape[1]), value=PAD_ID) for row in rows])


class TextInputs:
    def __init__(self, variant: dict, labels: dict[int, str], model_dir: Path):
        self.tokenizer = Tokenizer.load(Path(model_dir) / VOCAB_FILE)
        self.labels = [labels[index] for index in range(len(labels))]

    def rows(self, request: Any) -> torch.Tensor:
        body = request_payload(request)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput('send application/json {"text": "..."} with a non-empty string')
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInput(f"text is {len(text)} characters, over the limit of {MAX_TEXT_CHARS}")
        return torch.tensor([self.tokenizer.encode(text)])

    def collate(self, rows: list[torch.Tensor]) -> torch.Tensor:
        return pad(rows)

    def answer(self, request: Any, probabilities: torch.Tensor, model_name: str, model_version: str) -> dict:
        [row] = probabilities.tolist()
        best = max(range(len(row)), key=row.__getitem__)
        return {"label": self.labels[best], "probabilities": dict(zip(self.labels, row))}

    def example(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size, min(8, self.tokenizer.max_length)), UNK_ID)
