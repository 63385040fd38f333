"""Where a model's build lands, and building it only when its inputs changed.

Every model built into an artifacts dir gets:

    model-store/<MAR files>            what the pools load (shared by all models)
    models/<name>/build.json           manifest: recipe, input hash, MARs, backends, summary
    models/<name>/accuracy-report.json the recipe's quality report (gates, agreement, latency)
    models/<name>/...                  anything else the recipe keeps (calibration data)

and accuracy-report.json at the top is an index: one section per built model. A build is
made in a staging folder and published only when every gate passed, build.json last, so
build.json never names a MAR that is missing or from another build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from model.agreement import AgreementError
from model.archive import HANDLER_FILES, MODEL_VERSION

logger = logging.getLogger("model.build")

MODEL_STORE = "model-store"
MODELS_DIR = "models"
MANIFEST_NAME = "build.json"
REPORT_NAME = "accuracy-report.json"
MANIFEST_SCHEMA = 2
PACKAGE_DIR = Path(__file__).resolve().parent
# Every recipe depends on these; a recipe adds its own modules.
COMMON_SOURCES = tuple(PACKAGE_DIR / name for name in ("artifacts.py", "archive.py", "agreement.py")) + HANDLER_FILES


@dataclass(frozen=True)
class ModelPaths:
    artifacts_dir: Path
    name: str

    @property
    def model_store(self) -> Path:
        return self.artifacts_dir / MODEL_STORE

    @property
    def record_dir(self) -> Path:
        return self.artifacts_dir / MODELS_DIR / self.name

    @property
    def manifest(self) -> Path:
        return self.record_dir / MANIFEST_NAME

    @property
    def report(self) -> Path:
        return self.record_dir / REPORT_NAME


@dataclass(frozen=True)
class Staging:
    """Where a build writes before it is published: MARs in model_store, the rest in record_dir."""

    root: Path

    @property
    def model_store(self) -> Path:
        return self.root / MODEL_STORE

    @property
    def record_dir(self) -> Path:
        return self.root / "record"

    @property
    def work_dir(self) -> Path:
        """Scratch files (serialized models before archiving); never published."""
        return self.root / "work"


@dataclass(frozen=True)
class BuiltModel:
    """The result of one recipe: what build.json records beyond the common fields."""

    mars: dict[str, dict]  # MAR file name → what it is (variant, backend on this host, ...)
    report: dict  # the accuracy report; "failures" lists the gates it failed
    details: dict  # recipe-specific manifest fields


@dataclass(frozen=True)
class BuildResult:
    paths: ModelPaths
    manifest: dict
    rebuilt: bool  # False when the existing artifacts were already up to date

    @property
    def out_dir(self) -> Path:
        return self.paths.artifacts_dir

    def mar_path(self, variant: str) -> Path:
        [path] = [
            self.paths.artifacts_dir / MODEL_STORE / mar
            for mar, entry in self.manifest["mars"].items()
            if entry.get("variant") == variant
        ]
        return path

    def report(self) -> dict:
        return json.loads(self.paths.report.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compute_input_hash(sources: Iterable[Path], build_inputs: dict) -> str:
    """Hash of everything a build depends on: its sources plus the given inputs."""
    digest = hashlib.sha256()
    for source in sorted(set(sources)):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    digest.update(json.dumps(build_inputs, sort_keys=True).encode())
    return digest.hexdigest()


def is_up_to_date(paths: ModelPaths, input_hash: str) -> bool:
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("input_hash") != input_hash:
        return False
    expected = [paths.model_store / mar for mar in manifest.get("mars", {})]
    return all(path.exists() for path in expected + [paths.report])


def build_once(
    artifacts_dir: Path,
    name: str,
    recipe: str,
    sources: Iterable[Path],
    build_inputs: dict,
    build: Callable[[Staging], BuiltModel],
    *,
    force: bool = False,
) -> BuildResult:
    """Run build into a staging folder and publish it, unless the inputs are unchanged.

    Raises AgreementError naming the model when a gate failed; the previous build stays
    published and the failed report is kept beside it as failed-report.json.
    """
    paths = ModelPaths(Path(artifacts_dir), name)
    input_hash = compute_input_hash(
        [*COMMON_SOURCES, *sources], {"recipe": recipe, "torch": torch.__version__, **build_inputs}
    )
    if not force and is_up_to_date(paths, input_hash):
        logger.info("%s is up to date (input hash %s); nothing to build", name, input_hash[:12])
        return BuildResult(paths, json.loads(paths.manifest.read_text()), rebuilt=False)

    started = time.perf_counter()
    staging = Staging(paths.record_dir.parent / f".staging-{name}")
    shutil.rmtree(staging.root, ignore_errors=True)
    for folder in (staging.model_store, staging.record_dir, staging.work_dir):
        folder.mkdir(parents=True)
    try:
        logger.info("building %s with recipe %s", name, recipe)
        built = build(staging)
        built.report["input_hash"] = input_hash
        built.report["passed"] = not built.report.get("failures")
        if not built.report["passed"]:
            paths.record_dir.mkdir(parents=True, exist_ok=True)
            (paths.record_dir / "failed-report.json").write_text(json.dumps(built.report, indent=2) + "\n")
            raise AgreementError(f"{name}: " + "; ".join(built.report["failures"]), built.report)
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "model_name": name,
            "model_version": MODEL_VERSION,
            "recipe": recipe,
            "input_hash": input_hash,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "mars": built.mars,
            "accuracy_report": f"{MODELS_DIR}/{name}/{REPORT_NAME}",
            **built.details,
        }
        (staging.record_dir / REPORT_NAME).write_text(json.dumps(built.report, indent=2) + "\n")
        publish(staging, paths, manifest)
    finally:
        shutil.rmtree(staging.root, ignore_errors=True)
    write_report_index(paths.artifacts_dir)
    logger.info("built %s in %.1f s", name, manifest["build_seconds"])
    return BuildResult(paths, manifest, rebuilt=True)


def publish(staging: Staging, paths: ModelPaths, manifest: dict) -> None:
    """Move the finished build into place; build.json goes last so it never points at missing files."""
    paths.manifest.unlink(missing_ok=True)
    (paths.record_dir / "failed-report.json").unlink(missing_ok=True)
    for source, target in ((staging.model_store, paths.model_store), (staging.record_dir, paths.record_dir)):
        target.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            destination = target / item.name
            if destination.is_dir():
                shutil.rmtree(destination)
            item.replace(destination)
    paths.manifest.write_text(json.dumps(manifest, indent=2) + "\n")


def write_report_index(artifacts_dir: Path) -> None:
    """artifacts_dir/accuracy-report.json: every built model's report, one section each."""
    sections = {}
    for manifest_path in sorted((artifacts_dir / MODELS_DIR).glob(f"*/{MANIFEST_NAME}")):
        report_path = manifest_path.parent / REPORT_NAME
        if report_path.exists():
            sections[manifest_path.parent.name] = json.loads(report_path.read_text())
    (artifacts_dir / REPORT_NAME).write_text(json.dumps(sections, indent=2) + "\n")


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Train tiny models on one thread: their ops are too small to split, and two threads on a
    busy 2-core machine measured 14x slower a step (383 vs 27 ms, text-sentiment's model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def quality_failures(figures: dict[str, float], minimums: dict[str, float]) -> list[str]:
    """One message per figure below its minimum, naming the figure and both values (build_once
    adds the model's name)."""
    return [
        f"{figure} {figures[figure]:.4f} is below the threshold {minimum}"
        for figure, minimum in minimums.items()
        if figures[figure] < minimum
    ]
