"""The build recipes a model's `build:` names in the gateway config, and building one model.

    python -m model.recipes --out artifacts --name digits --recipe digits-mlp [--mar FILE] [--force]
    python -m model.recipes --out artifacts --name NAME (--factory PKG.MOD:FN | --program FILE.pt2
        | --torchvision ARCH [--weights FILE]) [--data PKG.MOD:FN] [--quantize static|dynamic|none]
        [--kind image|tensor|text] [--task classifier|regressor] [--force]

`build:` is either a recipe's name (the table below) or a mapping naming a model source
(gateway/model_config.py BuildConfig), which model/byo.py builds for any model:

| recipe                   | what it builds                                   | MARs in model-store/          |
|--------------------------|--------------------------------------------------|-------------------------------|
| resnet18, resnet50       | torchvision ResNet, random weights (model.build) | <name>-fp32/-int8/-gpu.mar    |
| digits-mlp               | MLP on sklearn digits, 64 floats → 10 classes    | <name>-fp32/-int8/-gpu.mar    |
| text-sentiment           | small transformer, {"text"} → negative/positive  | <name>-fp32/-int8/-gpu.mar    |
| stock-image-classifier   | tiny CNN on TorchServe's stock image_classifier  | the model's `mar:` (<name>.mar)|

Every MAR registers in TorchServe as model <name>, version 1.0. Each model's manifest and
report go to models/<name>/ (model/artifacts.py); a build is skipped when its inputs are
unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from model.agreement import AgreementError
from model.artifacts import BuildResult

# recipe → the module that builds it
RECIPES = {
    "resnet18": "model.build",
    "resnet50": "model.build",
    "digits-mlp": "model.digits_mlp",
    "text-sentiment": "model.text_sentiment",
    "stock-image-classifier": "model.stock_classifier",
}
# Recipes whose MAR is one file for every pool: the model config's `mar:` names it.
SINGLE_MAR_RECIPES = ("stock-image-classifier",)


class UnknownRecipe(ValueError):
    pass


def build_model(
    artifacts_dir: Path, name: str, recipe, *, mar: str | None = None, force: bool = False
) -> BuildResult:
    """Build model name's MARs into artifacts_dir/model-store with recipe, unless up to date.

    recipe is a recipe's name or a BuildConfig (a model source), which model/byo.py builds.

    mar is the file name of a recipe that makes one MAR for every pool (default <name>.mar);
    the other recipes make <name>-fp32/-int8/-gpu.mar and refuse a mar. Raises UnknownRecipe
    for a recipe not in RECIPES and AgreementError (naming the model) when a quality gate fails.
    """
    if not isinstance(recipe, str):
        if mar is not None:
            raise ValueError(f"model {name!r}: a model source builds {name}-<variant>.mar for each pool variant; drop `mar:`")
        from model import byo

        return byo.build(Path(artifacts_dir), name, recipe, force=force)
    if recipe not in RECIPES:
        raise UnknownRecipe(f"model {name!r}: unknown build recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    if mar is not None and recipe not in SINGLE_MAR_RECIPES:
        raise ValueError(
            f"model {name!r}: recipe {recipe!r} builds {name}-<variant>.mar for each pool variant, "
            f"not one MAR {mar!r}; drop `mar:` or use a recipe among {SINGLE_MAR_RECIPES}"
        )
    module = importlib.import_module(RECIPES[recipe])
    artifacts_dir = Path(artifacts_dir)
    if recipe in ("resnet18", "resnet50"):
        return module.build_models(artifacts_dir, recipe, name=name, force=force)
    if recipe in SINGLE_MAR_RECIPES:
        return module.build(artifacts_dir, name, mar=mar, force=force)
    return module.build(artifacts_dir, name, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--name", required=True, help="the model's name (TorchServe registers the MARs as it)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", choices=sorted(RECIPES))
    source.add_argument("--factory", help="package.module:function returning the nn.Module and example inputs")
    source.add_argument("--program", help="an ExportedProgram file (torch.export.save)")
    source.add_argument("--torchvision", help="a torchvision classifier by name (e.g. resnet50)")
    parser.add_argument("--weights", help="state_dict file for --torchvision (default: random weights)")
    parser.add_argument("--data", help="package.module:function returning calibration and evaluation data")
    parser.add_argument("--quantize", choices=("static", "dynamic", "none"))
    parser.add_argument("--kind", choices=("image", "tensor", "text"), help="how requests reach the model")
    parser.add_argument("--task", choices=("classifier", "regressor"), default="classifier")
    parser.add_argument("--mar", help="file name of a single-MAR recipe's MAR (default <name>.mar)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = args.recipe
    if recipe is None:
        from gateway.model_config import BuildConfig

        fields = ("factory", "program", "torchvision", "weights", "data", "quantize", "kind", "task")
        recipe = BuildConfig(**{key: getattr(args, key) for key in fields if getattr(args, key) is not None})
    try:
        result = build_model(args.out, args.name, recipe, mar=args.mar, force=args.force)
    except (AgreementError, ValueError) as error:  # a failed gate, a bad source (BuildInputError)
        print(f"build failed: {error}", file=sys.stderr)
        return 1
    print(f"{args.name}: {'built' if result.rebuilt else 'up to date'}; {', '.join(result.manifest['mars'])}")
    cpu_pool = result.manifest.get("cpu_pool")
    if cpu_pool:
        print(f"{args.name}: the CPU pool serves {cpu_pool['serves']} ({cpu_pool['backend']}): {cpu_pool['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
