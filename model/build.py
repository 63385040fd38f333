"""The resnet recipes: torchvision's resnet18/resnet50 as fp32, int8 and gpu MARs.

    python -m model.build --arch resnet18 --out artifacts [--weights FILE] [--seed N] [--force] [--report]

Produces, under --out (see model/artifacts.py for the layout):

    model-store/<name>-fp32.mar   fp32 reference (ExportedProgram)          -> backend cpu-fp32
    model-store/<name>-int8.mar   PT2E static int8 (AOTInductor package)    -> backend cpu-int8
    model-store/<name>-gpu.mar    TensorRT FP16 where CUDA+torch_tensorrt   -> tensorrt-fp16
                                  existed at build time, else fp32 that the handler
                                  runs with inductor-cuda (CUDA host) or cpu-fp32
    models/<name>/calibration/    the images int8 calibration saw
    models/<name>/accuracy-report.json  digits fp32/int8 accuracy + agreement, photo agreement, latency
    models/<name>/build.json      manifest: inputs hash, MAR paths, backends, report summary

Every MAR registers in TorchServe as model <name> (the arch unless named otherwise),
version 1.0. The build is skipped when build.json's input hash matches (sources of the
recipe and the handler, arguments, weights file, bundled photos, torch versions, GPU tooling).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

from model import photos, variants
from model.agreement import AgreementError, compare_logits
from model.artifacts import (
    PACKAGE_DIR,
    BuildResult,
    BuiltModel,
    Staging,
    build_once,
    sha256_file,
)
from model.digits import DigitsSettings, run_digits_check
from model.gpu import compile_tensorrt_fp16, detect_gpu_build_backend
from model.quantize import STATIC, write_int8_package
from model.speed import serve_faster_on_cpu
from torchserve_backend import tiergate_backends as backends
from torchserve_backend import tiergate_images as images

logger = logging.getLogger("model.build")

SUPPORTED_ARCHS = ("resnet18", "resnet50")
VARIANTS = ("fp32", "int8", "gpu")
CALIBRATION_DIR = "calibration"
DEFAULT_DIGITS = DigitsSettings()
SOURCES = tuple(
    PACKAGE_DIR / name for name in ("build.py", "photos.py", "digits.py", "gpu.py", "quantize.py", "speed.py")
)
POOL_BATCH_SIZE = 8  # the CPU pool's shipped batch: int8 must be faster there to be served


def imagenet_labels() -> dict[int, str]:
    """ImageNet class names; torchvision's list is already unique (e.g. "crane bird"),
    which matters because the handler keys its top-5 dict by name."""
    names = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    return dict(enumerate(names))


def recalibrate_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Give a randomly initialised network BatchNorm statistics measured on real images.

    Untrained running stats (mean 0, var 1) leave activations badly scaled: every
    photo then gets the same top-1 class and int8 calibration sees unrealistic
    ranges, which would make the agreement check meaningless.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    model.eval()


def load_classifier(arch: str, weights: Path | None, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


@dataclass(frozen=True)
class BuildOptions:
    arch: str
    seed: int
    weights_sha256: str | None
    max_batch_size: int
    calibration_views: int
    evaluation_views: int
    agreement_threshold: float
    photo_agreement_threshold: float | None
    digits: dict | None


def build_models(
    out_dir: Path,
    arch: str = "resnet18",
    weights: Path | None = None,
    seed: int = 0,
    *,
    name: str | None = None,
    force: bool = False,
    max_batch_size: int = 32,
    agreement_threshold: float = 0.99,
    photo_agreement_threshold: float | None = None,
    digits: DigitsSettings | None = DEFAULT_DIGITS,
    calibration_views: int = 3,
    evaluation_views: int = 8,
) -> BuildResult:
    """Build the fp32/int8/gpu MARs of model name (default: arch) into out_dir, unless up to date.

    agreement_threshold gates the digits CNN's int8/fp32 top-1 agreement (quantized the
    way <arch> is; digits=None skips that check).  photo_agreement_threshold, when set,
    also gates <arch>'s int8 and gpu agreement on the bundled photos; it is off by
    default because random-weight logits have tiny margins (see the report).
    Raises AgreementError, leaving the previous artifacts in place, when a gate fails.
    """
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unsupported arch {arch!r}; choose one of {SUPPORTED_ARCHS}")
    options = BuildOptions(
        arch=arch,
        seed=seed,
        weights_sha256=sha256_file(weights) if weights is not None else None,
        max_batch_size=max_batch_size,
        calibration_views=calibration_views,
        evaluation_views=evaluation_views,
        agreement_threshold=agreement_threshold,
        photo_agreement_threshold=photo_agreement_threshold,
        digits=asdict(digits) if digits is not None else None,
    )
    gpu_build_backend = detect_gpu_build_backend()
    build_inputs = {
        "options": asdict(options),
        "photos": [sha256_file(path) for path in photos.bundled_photo_paths()],
        "torchvision": torchvision.__version__,
        # A CUDA/TensorRT host must not reuse a build made without them.
        "gpu_build_backend": gpu_build_backend,
    }
    name = name or arch
    return build_once(
        out_dir,
        name,
        arch,
        SOURCES,
        build_inputs,
        lambda staging: build_resnet(staging, name, options, weights, gpu_build_backend),
        force=force,
    )


@dataclass
class PhotoSets:
    calibration_paths: list[Path]
    calibration_crops: list[torch.Tensor]  # (3, 224, 224) uint8, saved as the calibration record
    calibration: torch.Tensor
    evaluation: torch.Tensor


def prepare_photos(options: BuildOptions) -> PhotoSets:
    """Calibration and evaluation images from disjoint photos, preprocessed exactly as served."""
    calibration_paths, evaluation_paths = photos.split_photos(photos.bundled_photo_paths())
    calibration_crops = [
        images.crop_image(image)
        for image in photos.photo_views(calibration_paths, options.calibration_views, options.seed)
    ]
    evaluation_images = photos.photo_views(evaluation_paths, options.evaluation_views, options.seed + 1)
    return PhotoSets(
        calibration_paths,
        calibration_crops,
        torch.stack([images.normalize_image(crop) for crop in calibration_crops]),
        torch.stack([images.preprocess_image(image) for image in evaluation_images]),
    )


def write_artifacts(
    model: torch.nn.Module,
    work_dir: Path,
    name: str,
    options: BuildOptions,
    calibration_batches: list[torch.Tensor],
    gpu_build_backend: str,
) -> dict[str, dict]:
    """Serialize the fp32, int8 and (where possible) TensorRT models; return each variant's variant.json."""
    arch = options.arch
    files = {
        backends.ARTIFACT_FP32: f"{name}-fp32.pt2",
        backends.ARTIFACT_INT8: f"{name}-int8.aoti.pt2",
        backends.ARTIFACT_TENSORRT: f"{name}-tensorrt-fp16.ep",
    }
    logger.info("exporting fp32 %s", arch)
    example = torch.randn(2, 3, images.CROP_SIZE, images.CROP_SIZE)  # 2: export specialises batch 1
    dims = ({0: torch.export.Dim("batch", min=1, max=options.max_batch_size)},)
    exported = torch.export.export(copy.deepcopy(model), (example,), dynamic_shapes=dims)
    torch.export.save(exported, str(work_dir / files[backends.ARTIFACT_FP32]))

    logger.info("quantizing %s to int8 and compiling it (AOTInductor)", arch)
    write_int8_package(model, example, dims, STATIC, work_dir / files[backends.ARTIFACT_INT8], calibration_batches)

    gpu_artifacts = [backends.ARTIFACT_FP32]
    if gpu_build_backend == backends.BACKEND_TENSORRT_FP16:
        logger.info("compiling %s with TensorRT FP16", arch)
        compile_tensorrt_fp16(model, example, options.max_batch_size, work_dir / files[backends.ARTIFACT_TENSORRT])
        gpu_artifacts.insert(0, backends.ARTIFACT_TENSORRT)
    return variants.variant_specs(name, "image", options.max_batch_size, files, gpu_artifacts)


def check_variants(
    loaded: dict[str, backends.LoadedModel],
    record_dir: Path,
    photo_sets: PhotoSets,
    options: BuildOptions,
    weights: Path | None,
) -> dict:
    """Compare each variant, loaded the way the handler will, with fp32; run the digits check.

    Returns the accuracy report; its "failures" lists the configured gates that failed.
    """
    logger.info("checking agreement and latency of the built variants")
    reference = loaded["fp32"].logits(photo_sets.evaluation)
    threshold = options.photo_agreement_threshold
    photo_report = {
        "arch": options.arch,
        "weights": weights.name
        if weights is not None
        else f"random (seed {options.seed}), BatchNorm stats from calibration photos",
        "calibration_images": len(photo_sets.calibration),
        "evaluation_images": len(photo_sets.evaluation),
        "photo_sources": "scikit-image, scikit-learn and matplotlib sample photos; "
        "calibration and evaluation use disjoint photos (whole + seeded random crops)",
        "backends": {variant: model.backend for variant, model in loaded.items()},
        "int8_vs_fp32": compare_logits(reference, loaded["int8"].logits(photo_sets.evaluation)),
        "gpu_vs_fp32": compare_logits(reference, loaded["gpu"].logits(photo_sets.evaluation)),
        "agreement_threshold": threshold,
    }
    failures = []
    if threshold is not None:
        agreements = {key: photo_report[key]["top1_agreement"] for key in ("int8_vs_fp32", "gpu_vs_fp32")}
        if min(agreements.values()) < threshold:
            failures.append(f"{options.arch} photo top-1 agreement below {threshold}: {agreements}")
    photo_report["passed"] = not failures
    report = {
        "photos": photo_report,
        "latency_ms_batch1": variants.latency_report(
            loaded, torch.randn(1, 3, images.CROP_SIZE, images.CROP_SIZE)
        ),
    }
    if options.digits is not None:
        logger.info("training and quantizing the digits model")
        try:
            report["digits"] = run_digits_check(
                DigitsSettings(**options.digits),
                options.seed,
                options.agreement_threshold,
                record_dir / CALIBRATION_DIR / "digits-calibration.npz",
            )
        except AgreementError as error:
            report["digits"] = error.report
            failures.append(str(error))
    report["failures"] = failures
    return report


def describe_build(options: BuildOptions, weights: Path | None, report: dict) -> dict:
    """build.json's resnet-specific fields."""
    arch = options.arch
    digits = report.get("digits")
    return {
        "arch": arch,
        "seed": options.seed,
        "weights": (
            {"file": str(weights), "sha256": options.weights_sha256}
            if weights is not None
            else {"file": None, "random_init_seed": options.seed, "batchnorm_recalibrated": True}
        ),
        "max_batch_size": options.max_batch_size,
        "cpu_pool": report["cpu_pool"],
        "calibration": {
            arch: f"{CALIBRATION_DIR}/{arch}-calibration.npz",
            **({"digits": f"{CALIBRATION_DIR}/digits-calibration.npz"} if digits else {}),
        },
        "accuracy": {
            "digits": {
                key: digits[key]
                for key in (
                    "fp32_top1_accuracy",
                    "int8_top1_accuracy",
                    "top1_agreement",
                    "agreement_threshold",
                )
            }
            if digits
            else None,
            f"{arch}_int8_top1_agreement": report["photos"]["int8_vs_fp32"]["top1_agreement"],
            f"{arch}_gpu_top1_agreement": report["photos"]["gpu_vs_fp32"]["top1_agreement"],
        },
    }


def build_resnet(
    staging: Staging, name: str, options: BuildOptions, weights: Path | None, gpu_build_backend: str
) -> BuiltModel:
    logger.info("preparing calibration and evaluation photos")
    photo_sets = prepare_photos(options)
    calibration_batches = list(photo_sets.calibration.split(8))
    model = load_classifier(options.arch, weights, options.seed)
    if weights is None:
        recalibrate_batchnorm(model, calibration_batches)

    specs = write_artifacts(model, staging.work_dir, name, options, calibration_batches, gpu_build_backend)
    loaded = variants.load_variants(staging.work_dir, specs)
    report = check_variants(loaded, staging.record_dir, photo_sets, options, weights)
    report.update(serve_faster_on_cpu(staging.work_dir, specs, loaded, photo_sets.evaluation, POOL_BATCH_SIZE))
    (staging.record_dir / CALIBRATION_DIR).mkdir(exist_ok=True)
    np.savez_compressed(
        staging.record_dir / CALIBRATION_DIR / f"{options.arch}-calibration.npz",
        images=np.stack([crop.permute(1, 2, 0).numpy() for crop in photo_sets.calibration_crops]),
        photos=np.array([path.name for path in photo_sets.calibration_paths]),
    )
    if not report["failures"]:
        labels_path = staging.work_dir / backends.LABELS_FILE
        labels_path.write_text(json.dumps({str(i): label for i, label in imagenet_labels().items()}, indent=0))
        logger.info("archiving MARs")
        variants.archive_variants(name, staging.work_dir, staging.model_store, specs, [labels_path])
    return BuiltModel(
        mars=variants.describe_mars(name, specs, loaded),
        report=report,
        details=describe_build(options, weights, report),
    )


def format_report(report: dict) -> str:
    """Human-readable summary of accuracy-report.json (sections missing from a failed build are left out)."""
    lines = []
    digits = report.get("digits")
    if digits:
        lines.append(
            f"digits (held-out {digits['test_samples']} images): "
            f"fp32 top-1 {digits['fp32_top1_accuracy']:.4f}, int8 top-1 {digits['int8_top1_accuracy']:.4f}, "
            f"agreement {digits['top1_agreement']:.4f} (threshold {digits['agreement_threshold']}) "
            f"-> {'PASS' if digits['passed'] else 'FAIL'}"
        )
    photo = report.get("photos")
    if photo:
        lines.append(
            f"{photo['arch']} on {photo['evaluation_images']} photo views ({photo['weights']}), "
            f"backends {photo['backends']}:"
        )
        for key in ("int8_vs_fp32", "gpu_vs_fp32"):
            c = photo[key]
            lines.append(
                f"  {key}: top-1 agreement {c['top1_agreement']:.4f}, top-5 overlap {c['top5_overlap']:.4f}, "
                f"fp32 top-1 in top-5 {c['reference_top1_in_candidate_top5']:.4f}, "
                f"logit cosine {c['logit_cosine_similarity']:.5f}, "
                f"relative error {c['logit_relative_error']:.4f}"
            )
        reference = photo["int8_vs_fp32"]
        lines.append(
            f"  fp32 reference: {reference['reference_distinct_top1']} distinct top-1 classes, "
            f"median top-1 margin {reference['reference_median_top1_margin']:.4f}"
        )
    if "cpu_pool" in report:
        speed = ", ".join(
            f"{key.replace('_', ' ')} x{value['int8_speedup']}" for key, value in report["speed"].items() if key.startswith("batch_")
        )
        lines.append(f"int8 ÷ fp32 images/s: {speed}; the CPU pool serves {report['cpu_pool']['serves']} ({report['cpu_pool']['why']})")
    if "latency_ms_batch1" in report:
        latency = ", ".join(f"{name} {value}" for name, value in report["latency_ms_batch1"].items())
        lines.append(f"latency at batch 1 (median ms): {latency}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=SUPPORTED_ARCHS, default="resnet18")
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--weights", type=Path, help="state_dict file for --arch (default: random init)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.99, help="digits int8/fp32 top-1 agreement gate")
    parser.add_argument(
        "--photo-threshold", type=float, help="also gate <arch> int8/gpu agreement on photos (off by default)"
    )
    parser.add_argument("--report", action="store_true", help="print the accuracy report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        result = build_models(
            args.out,
            args.arch,
            args.weights,
            args.seed,
            force=args.force,
            max_batch_size=args.max_batch_size,
            agreement_threshold=args.threshold,
            photo_agreement_threshold=args.photo_threshold,
        )
    except AgreementError as error:
        print(f"build failed: {error}", file=sys.stderr)
        print(format_report(error.report))
        return 1
    if args.report:
        print(format_report(result.report()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
