"""The handler's text kind and its tokenizer: {"text"} in, label and probabilities out; texts of
different lengths padded into one batch answer as they would alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.text_sentiment import TextClassifier
from tests.unit.test_handler import make_context, run, status
from torchserve_backend import handler
from torchserve_backend import tiergate_backends as backends
from torchserve_backend.tiergate_text import PAD, PAD_ID, UNK, UNK_ID, VOCAB_FILE, Tokenizer

WORDS = ["the", "movie", "was", "not", "good", "bad", "didn't", "like", "it"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_words(WORDS, max_length=6)


def test_tokenizer_splits_lower_case_words_and_maps_the_unknown(tokenizer):
    assert tokenizer.tokens[:2] == [PAD, UNK]
    assert Tokenizer.words("The MOVIE, wasn't... 10/10!") == ["the", "movie", "wasn't", "10", "10"]
    ids = tokenizer.encode("The movie was NOT good!")
    assert [tokenizer.tokens[i] for i in ids] == ["the", "movie", "was", "not", "good"]
    assert tokenizer.encode("I didn't like it") == [UNK_ID] + [tokenizer.tokens.index(w) for w in ("didn't", "like", "it")]


def test_tokenizer_truncates_and_never_returns_nothing(tokenizer):
    assert len(tokenizer.encode("good " * 100)) == 6
    assert tokenizer.encode("") == tokenizer.encode("?!...") == [UNK_ID]


def test_tokenizer_batch_pads_right_and_round_trips_through_its_file(tokenizer, tmp_path):
    batch = tokenizer.batch(["good", "the movie was bad"])
    assert batch.shape == (2, 4) and batch[0, 1:].tolist() == [PAD_ID] * 3
    tokenizer.save(tmp_path / VOCAB_FILE)
    loaded = Tokenizer.load(tmp_path / VOCAB_FILE)
    assert loaded.tokens == tokenizer.tokens and loaded.max_length == 6
    with pytest.raises(ValueError, match="starts with"):
        Tokenizer(["good", PAD, UNK], 6)


def write_text_model_dir(path: Path, tokenizer: Tokenizer) -> Path:
    """An unpacked text MAR: an untrained classifier as the fp32 program, its vocab and labels."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = TextClassifier(len(tokenizer.tokens), width=16, heads=2, blocks=1, classes=2).eval()
    dims = {0: torch.export.Dim("batch", min=1, max=8), 1: torch.export.Dim("tokens", min=1, max=6)}
    example = torch.tensor([[2, 3, 4], [5, 6, 0]])
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=(dims,)), str(path / "text.pt2"))
    spec = {"arch": "sentiment", "kind": "text", "variant": "fp32", "max_batch_size": 8,
            "artifacts": {backends.ARTIFACT_FP32: "text.pt2"}}  # fmt: skip
    (path / backends.VARIANT_FILE).write_text(json.dumps(spec))
    (path / backends.LABELS_FILE).write_text(json.dumps({"0": "negative", "1": "positive"}))
    tokenizer.save(path / VOCAB_FILE)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    return write_text_model_dir(tmp_path_factory.mktemp("text"), tokenizer)


@pytest.fixture
def service(model_dir) -> handler.TiergateHandler:
    service = handler.TiergateHandler()
    service.initialize(make_context(model_dir), cuda_available=False)
    return service


def test_texts_of_different_lengths_batch_like_they_run_alone(service, model_dir):
    texts = ["good", "the movie was not good at all", "bad movie"]
    singles = [run(service, model_dir, [{"body": {"text": text}}])[0][0] for text in texts]

    answers, context = run(service, model_dir, [{"body": {"text": text}} for text in texts])

    assert [status(context, i) for i in range(3)] == [200] * 3
    assert context.get_response_headers(0)[backends.BATCH_SIZE_HEADER] == "3"
    assert context.get_response_headers(0)[backends.BACKEND_HEADER] == "cpu-fp32"
    for answer, single in zip(answers, singles):
        assert set(answer) == {"label", "probabilities"}
        assert list(answer["probabilities"]) == ["negative", "positive"]
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0)
        assert answer["label"] == max(answer["probabilities"], key=answer["probabilities"].get)
        assert answer["label"] == single["label"]
        for label, p in answer["probabilities"].items():
            assert p == pytest.approx(single["probabilities"][label], abs=1e-5)  # padding is ignored


@pytest.mark.parametrize(
    "body",
    [{"text": ""}, {"text": "   "}, {"text": 5}, {"words": "good"}, ["good"], b"good"],
    ids=["empty", "blank", "number", "no-text", "list", "raw-bytes"],
)
def test_bad_bodies_get_400_while_the_rest_of_the_batch_is_answered(service, model_dir, body):
    answers, context = run(service, model_dir, [{"body": {"text": "good"}}, {"body": body}])

    assert [status(context, 0), status(context, 1)] == [200, 400]
    assert answers[1]["type"] == "InvalidInput" and '{"text": "..."}' in answers[1]["message"]
    assert answers[0]["label"] in ("negative", "positive")
