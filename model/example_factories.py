"""Example model factories: what a team bringing its own model writes (`build: {factory: ...}`).

A factory takes no arguments and returns a ModelSource: the trained nn.Module, an example
batch, and the data the build calibrates int8 on and checks the variants with. This one is
the tabular MLP on scikit-learn's bundled digits (64 pixel counts in, 10 classes out), trained
here in a few seconds; gateway/tiergate.yaml builds the `digits` model from it.
"""

from __future__ import annotations

from model.artifacts import single_threaded
from model.digits_mlp import DigitsMlpSettings, load_split, train
from model.sources import ModelData, ModelSource


def digits_mlp() -> ModelSource:
    settings = DigitsMlpSettings()
    train_x, train_y, test_x, test_y = load_split(settings)
    with single_threaded():
        module = train(train_x, train_y, settings)
    return ModelSource(
        module,
        example_inputs=test_x[:2],
        data=ModelData(
            calibration=list(train_x[:256].split(64)), evaluation=test_x, labels=test_y,
            description=f"scikit-learn digits: {len(train_x)} training rows, {len(test_x)} held-out rows "
            f"(stratified, seed {settings.seed})",
        ),
        class_names=[str(digit) for digit in range(10)],
    )
