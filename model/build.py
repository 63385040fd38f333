"""Build tiergate's model variants and their TorchServe MARs.

    python -m model.build --arch resnet18 --out artifacts [--weights FILE] [--seed N] [--force] [--report]

Produces, under --out:

    model-store/<arch>-fp32.mar   fp32 reference (ExportedProgram)          -> backend cpu-fp32
    model-store/<arch>-int8.mar   FX static int8 (TorchScript)              -> backend cpu-int8
    model-store/<arch>-gpu.mar    TensorRT FP16 where CUDA+torch_tensorrt   -> tensorrt-fp16
                                  existed at build time, else fp32 that the handler
                                  runs with inductor-cuda (CUDA host) or cpu-fp32
    calibration/                  the images int8 calibration saw
    accuracy-report.json          digits fp32/int8 accuracy + agreement, photo agreement, latency
    build.json                    manifest: inputs hash, MAR paths, backends, report summary

Every MAR registers in TorchServe as model name <arch>, version 1.0.  The build
is skipped when build.json's input hash matches (sources of model/ and the
handler, arguments, weights file, bundled photos, torch versions, GPU tooling).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torchvision

from model import photos
from model.agreement import AgreementError, compare_logits
from model.archive import MODEL_VERSION, archive_mar
from model.digits import DigitsSettings, run_digits_check
from model.gpu import compile_tensorrt_fp16, detect_gpu_build_backend
from model.quantize import quantize_int8, save_torchscript
from torchserve_backend import handler

logger = logging.getLogger("model.build")

SUPPORTED_ARCHS = ("resnet18", "resnet50")
VARIANTS = ("fp32", "int8", "gpu")
MANIFEST_NAME = "build.json"
REPORT_NAME = "accuracy-report.json"
MODEL_STORE = "model-store"
CALIBRATION_DIR = "calibration"
MANIFEST_SCHEMA = 1
DEFAULT_DIGITS = DigitsSettings()

PACKAGE_DIR = Path(__file__).resolve().parent
HANDLER_PATH = Path(handler.__file__).resolve()


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    manifest: dict
    rebuilt: bool  # False when the existing artifacts were already up to date

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_NAME

    def mar_path(self, variant: str) -> Path:
        return self.out_dir / self.manifest["variants"][variant]["mar"]

    def report(self) -> dict:
        return json.loads(self.report_path.read_text())


def mar_name(arch: str, variant: str) -> str:
    return f"{arch}-{variant}.mar"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_input_hash(build_inputs: dict) -> str:
    """Hash of everything a build depends on: our sources plus the given inputs."""
    digest = hashlib.sha256()
    for source in sorted(PACKAGE_DIR.glob("*.py")) + [HANDLER_PATH]:
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    digest.update(json.dumps(build_inputs, sort_keys=True).encode())
    return digest.hexdigest()


def is_up_to_date(out_dir: Path, input_hash: str) -> bool:
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("input_hash") != input_hash:
        return False
    expected = [out_dir / entry["mar"] for entry in manifest["variants"].values()]
    return all(path.exists() for path in expected + [out_dir / REPORT_NAME])


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


def median_latency_ms(loaded: handler.LoadedModel, runs: int = 20) -> float:
    example = torch.randn(1, 3, handler.CROP_SIZE, handler.CROP_SIZE)
    for _ in range(3):
        loaded.logits(example)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        loaded.logits(example)
        timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 2)


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
    force: bool = False,
    max_batch_size: int = 32,
    agreement_threshold: float = 0.99,
    photo_agreement_threshold: float | None = None,
    digits: DigitsSettings | None = DEFAULT_DIGITS,
    calibration_views: int = 3,
    evaluation_views: int = 8,
) -> BuildResult:
    """Build the fp32/int8/gpu MARs for arch into out_dir, unless already up to date.

    agreement_threshold gates the digits model's int8/fp32 top-1 agreement
    (digits=None skips that check).  photo_agreement_threshold, when set, also
    gates <arch>'s int8 and gpu agreement on the bundled photos; it is off by
    default because random-weight logits have tiny margins (see the report).
    Raises AgreementError, leaving the previous artifacts in place, when a gate fails.
    """
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"unsupported arch {arch!r}; choose one of {SUPPORTED_ARCHS}")
    out_dir = Path(out_dir)
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
    input_hash = compute_input_hash(
        {
            "options": asdict(options),
            "photos": [sha256_file(path) for path in photos.bundled_photo_paths()],
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            # A CUDA/TensorRT host must not reuse a build made without them.
            "gpu_build_backend": gpu_build_backend,
        }
    )
    if not force and is_up_to_date(out_dir, input_hash):
        logger.info("%s is up to date (input hash %s); nothing to build", out_dir, input_hash[:12])
        return BuildResult(out_dir, json.loads((out_dir / MANIFEST_NAME).read_text()), rebuilt=False)

    started = time.perf_counter()
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest = _build_into(staging, out_dir, options, weights, gpu_build_backend, input_hash)
        manifest["build_seconds"] = round(time.perf_counter() - started, 1)
        _publish(staging, out_dir, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built %s in %.1f s", arch, manifest["build_seconds"])
    return BuildResult(out_dir, manifest, rebuilt=True)


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
        handler.crop_image(image)
        for image in photos.photo_views(calibration_paths, options.calibration_views, options.seed)
    ]
    evaluation_images = photos.photo_views(evaluation_paths, options.evaluation_views, options.seed + 1)
    return PhotoSets(
        calibration_paths,
        calibration_crops,
        torch.stack([handler.normalize_image(crop) for crop in calibration_crops]),
        torch.stack([handler.preprocess_image(image) for image in evaluation_images]),
    )


def write_artifacts(
    model: torch.nn.Module,
    staging: Path,
    options: BuildOptions,
    calibration_batches: list[torch.Tensor],
    gpu_build_backend: str,
) -> dict[str, dict]:
    """Serialize the fp32, int8 and (where possible) TensorRT models; return each variant's variant.json."""
    arch = options.arch
    files = {
        handler.ARTIFACT_FP32: f"{arch}-fp32.pt2",
        handler.ARTIFACT_INT8: f"{arch}-int8.torchscript.pt",
        handler.ARTIFACT_TENSORRT: f"{arch}-tensorrt-fp16.ep",
    }
    logger.info("exporting fp32 %s", arch)
    example = torch.randn(2, 3, handler.CROP_SIZE, handler.CROP_SIZE)  # 2: export specialises batch 1
    batch_dim = torch.export.Dim("batch", min=1, max=options.max_batch_size)
    exported = torch.export.export(copy.deepcopy(model), (example,), dynamic_shapes=({0: batch_dim},))
    torch.export.save(exported, str(staging / files[handler.ARTIFACT_FP32]))

    logger.info("quantizing %s to int8", arch)
    quantized = quantize_int8(model, calibration_batches)
    save_torchscript(quantized, example, staging / files[handler.ARTIFACT_INT8])

    gpu_artifacts = [handler.ARTIFACT_FP32]
    if gpu_build_backend == handler.BACKEND_TENSORRT_FP16:
        logger.info("compiling %s with TensorRT FP16", arch)
        compile_tensorrt_fp16(
            model, handler.CROP_SIZE, options.max_batch_size, staging / files[handler.ARTIFACT_TENSORRT]
        )
        gpu_artifacts.insert(0, handler.ARTIFACT_TENSORRT)
    variant_artifacts = {
        "fp32": [handler.ARTIFACT_FP32],
        "int8": [handler.ARTIFACT_INT8],
        "gpu": gpu_artifacts,
    }
    return {
        variant: {
            "arch": arch,
            "variant": variant,
            "max_batch_size": options.max_batch_size,
            "artifacts": {name: files[name] for name in names},
        }
        for variant, names in variant_artifacts.items()
    }


def check_variants(
    staging: Path,
    variant_specs: dict[str, dict],
    photo_sets: PhotoSets,
    options: BuildOptions,
    weights: Path | None,
    input_hash: str,
) -> dict:
    """Load each variant the way the handler will and compare it with fp32; run the digits check.

    Returns the accuracy report; its "passed" is False when a configured gate failed.
    """
    logger.info("checking agreement and latency of the built variants")
    loaded = {variant: handler.load_model(staging, spec) for variant, spec in variant_specs.items()}
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
        "input_hash": input_hash,
        "photos": photo_report,
        "latency_ms_batch1": {
            "torch_threads": torch.get_num_threads(),
            **{f"{variant} ({model.backend})": median_latency_ms(model) for variant, model in loaded.items()},
        },
    }
    if options.digits is not None:
        logger.info("training and quantizing the digits model")
        try:
            report["digits"] = run_digits_check(
                DigitsSettings(**options.digits),
                options.seed,
                options.agreement_threshold,
                staging / CALIBRATION_DIR / "digits-calibration.npz",
            )
        except AgreementError as error:
            report["digits"] = error.report
            failures.append(str(error))
    report["passed"] = not failures
    report["failures"] = failures
    return report


def archive_variants(staging: Path, arch: str, variant_specs: dict[str, dict]) -> None:
    logger.info("archiving MARs")
    labels_path = staging / handler.LABELS_FILE
    labels_path.write_text(json.dumps({str(i): name for i, name in imagenet_labels().items()}, indent=0))
    for variant, spec in variant_specs.items():
        spec_dir = staging / f"{variant}-spec"  # each MAR needs its own file named variant.json
        spec_dir.mkdir()
        (spec_dir / handler.VARIANT_FILE).write_text(json.dumps(spec, indent=2))
        files = [staging / name for name in spec["artifacts"].values()]
        archive_mar(
            arch,
            HANDLER_PATH,
            serialized_file=files[0],
            extra_files=files[1:] + [labels_path, spec_dir / handler.VARIANT_FILE],
            mar_path=staging / MODEL_STORE / mar_name(arch, variant),
        )


def describe_build(
    options: BuildOptions, weights: Path | None, input_hash: str, variant_specs: dict[str, dict], report: dict
) -> dict:
    """The build.json manifest."""
    arch = options.arch
    backends = report["photos"]["backends"]
    variants = {
        variant: {
            "mar": f"{MODEL_STORE}/{mar_name(arch, variant)}",
            "artifacts": list(spec["artifacts"]),
            "backend": backends[variant],  # what the handler picked on this build host
        }
        for variant, spec in variant_specs.items()
    }
    gpu = variants["gpu"]
    gpu["tensorrt_compiled"] = handler.ARTIFACT_TENSORRT in gpu["artifacts"]
    if not gpu["tensorrt_compiled"]:
        gpu["backend_on_cuda_host"] = handler.BACKEND_INDUCTOR_CUDA
    digits = report.get("digits")
    return {
        "schema": MANIFEST_SCHEMA,
        "arch": arch,
        "model_name": arch,
        "model_version": MODEL_VERSION,
        "seed": options.seed,
        "weights": (
            {"file": str(weights), "sha256": options.weights_sha256}
            if weights is not None
            else {"file": None, "random_init_seed": options.seed, "batchnorm_recalibrated": True}
        ),
        "input_hash": input_hash,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "max_batch_size": options.max_batch_size,
        "variants": variants,
        "calibration": {
            arch: f"{CALIBRATION_DIR}/{arch}-calibration.npz",
            **({"digits": f"{CALIBRATION_DIR}/digits-calibration.npz"} if digits else {}),
        },
        "accuracy_report": REPORT_NAME,
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


def _build_into(
    staging: Path,
    out_dir: Path,
    options: BuildOptions,
    weights: Path | None,
    gpu_build_backend: str,
    input_hash: str,
) -> dict:
    logger.info("preparing calibration and evaluation photos")
    photo_sets = prepare_photos(options)
    calibration_batches = list(photo_sets.calibration.split(8))
    model = load_classifier(options.arch, weights, options.seed)
    if weights is None:
        recalibrate_batchnorm(model, calibration_batches)

    variant_specs = write_artifacts(model, staging, options, calibration_batches, gpu_build_backend)
    report = check_variants(staging, variant_specs, photo_sets, options, weights, input_hash)
    if not report["passed"]:
        # Kept for diagnosis; build.json still describes the previous good build.
        (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        raise AgreementError("; ".join(report["failures"]), report)

    (staging / CALIBRATION_DIR).mkdir(exist_ok=True)
    np.savez_compressed(
        staging / CALIBRATION_DIR / f"{options.arch}-calibration.npz",
        images=np.stack([crop.permute(1, 2, 0).numpy() for crop in photo_sets.calibration_crops]),
        photos=np.array([path.name for path in photo_sets.calibration_paths]),
    )
    (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    archive_variants(staging, options.arch, variant_specs)
    return describe_build(options, weights, input_hash, variant_specs, report)


def _publish(staging: Path, out_dir: Path, manifest: dict) -> None:
    """Move the finished build into place; build.json goes last so it never points at missing files."""
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for folder in (MODEL_STORE, CALIBRATION_DIR):
        target = out_dir / folder
        target.mkdir(exist_ok=True)
        for file in (staging / folder).iterdir():
            file.replace(target / file.name)
    (staging / REPORT_NAME).replace(out_dir / REPORT_NAME)
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


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
