"""Labelled sentences for the text-sentiment recipe, generated from templates and word lists.

Training and held-out sentences share the sentiment words (a model cannot know what a word
it never saw means) but not their templates, and the held-out set also uses nouns that
training never shows: held-out accuracy measures whether the model learnt the words and
negation, not whether it memorised sentences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NEGATIVE, POSITIVE = 0, 1
LABELS = ("negative", "positive")

POSITIVE_ADJECTIVES = (
    "good", "great", "excellent", "wonderful", "amazing", "delightful", "superb", "pleasant",
    "fantastic", "lovely", "brilliant", "enjoyable", "charming", "impressive", "perfect",
)  # fmt: skip
NEGATIVE_ADJECTIVES = (
    "bad", "terrible", "awful", "horrible", "boring", "dreadful", "poor", "disappointing",
    "mediocre", "painful", "dull", "weak", "annoying", "unpleasant", "lousy",
)  # fmt: skip
# (base form, past tense): "i did not enjoy", "i enjoyed"
POSITIVE_VERBS = (("love", "loved"), ("enjoy", "enjoyed"), ("like", "liked"), ("adore", "adored"),
                  ("admire", "admired"), ("appreciate", "appreciated"))  # fmt: skip
NEGATIVE_VERBS = (("hate", "hated"), ("dislike", "disliked"), ("regret", "regretted"), ("loathe", "loathed"),
                  ("despise", "despised"), ("resent", "resented"))  # fmt: skip
INTENSIFIERS = ("very", "really", "truly", "so", "extremely", "quite", "pretty")
TRAIN_NOUNS = (
    "movie", "film", "book", "meal", "service", "hotel", "show", "album", "game", "phone",
    "room", "staff", "plot", "restaurant", "concert", "trip",
)  # fmt: skip
HELD_OUT_NOUNS = ("story", "product", "app", "course", "flight", "camera")

# {adj}/{verb}/{base} (a verb's past tense or base form) carry the sentiment; a template marked
# negated flips it.
TRAIN_TEMPLATES = (
    ("the {noun} was {adj}", False),
    ("the {noun} was {int} {adj}", False),
    ("this {noun} is {adj}", False),
    ("what a {adj} {noun}", False),
    ("such an {int} {adj} {noun}", False),
    ("i {verb} the {noun}", False),
    ("they {verb} this {noun}", False),
    ("i {verb} this {noun} a lot", False),
    ("honestly the {noun} is {int} {adj}", False),
    ("the {noun} was not {adj}", True),
    ("this {noun} is not {int} {adj}", True),
    ("i did not {base} the {noun}", True),
    ("nobody {verb} this {noun}", True),
    ("the {noun} was never {adj}", True),
)
HELD_OUT_TEMPLATES = (
    ("our {noun} was {int} {adj}", False),
    ("a {adj} {noun} overall", False),
    ("we {verb} that {noun}", False),
    ("my {noun} is not {adj}", True),
    ("we did not {base} our {noun}", True),
    ("that {noun} was not {int} {adj} at all", True),
)


@dataclass(frozen=True)
class Sentence:
    text: str
    label: int


def fill(template: str, negated: bool, sentiment: int, noun: str, rng: random.Random) -> Sentence:
    adjectives = POSITIVE_ADJECTIVES if sentiment == POSITIVE else NEGATIVE_ADJECTIVES
    base, past = rng.choice(POSITIVE_VERBS if sentiment == POSITIVE else NEGATIVE_VERBS)
    text = template.format(noun=noun, adj=rng.choice(adjectives), verb=past, base=base, int=rng.choice(INTENSIFIERS))
    return Sentence(text, 1 - sentiment if negated else sentiment)


def generate(templates, nouns, count: int, rng: random.Random) -> list[Sentence]:
    """count sentences, templates and sentiments drawn evenly, everything else at random."""
    sentences = []
    for index in range(count):
        template, negated = templates[index % len(templates)]
        sentiment = (index // len(templates)) % 2
        sentences.append(fill(template, negated, sentiment, rng.choice(nouns), rng))
    rng.shuffle(sentences)
    return sentences


def train_and_held_out(train_count: int, held_out_count: int, seed: int) -> tuple[list[Sentence], list[Sentence]]:
    rng = random.Random(seed)
    return (
        generate(TRAIN_TEMPLATES, TRAIN_NOUNS, train_count, rng),
        generate(HELD_OUT_TEMPLATES, HELD_OUT_NOUNS, held_out_count, rng),
    )
