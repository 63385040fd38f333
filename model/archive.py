"""Pack model artifacts into TorchServe MARs with torch-model-archiver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torchserve_backend import handler, tiergate_backends, tiergate_images, tiergate_tensors, tiergate_text

MODEL_VERSION = "1.0"

HANDLER_PATH = Path(handler.__file__).resolve()
# handler.py imports these as top-level modules from the model directory, so every MAR
# served by tiergate's handler carries them beside it.
HANDLER_MODULES = tuple(
    Path(module.__file__).resolve()
    for module in (tiergate_backends, tiergate_images, tiergate_tensors, tiergate_text)
)
HANDLER_FILES = (HANDLER_PATH, *HANDLER_MODULES)


def archive_tiergate_mar(model_name: str, serialized_file: Path, extra_files: list[Path], mar_path: Path) -> Path:
    """A MAR served by tiergate's own handler (torchserve_backend/handler.py and its modules)."""
    return archive_mar(model_name, str(HANDLER_PATH), serialized_file, [*extra_files, *HANDLER_MODULES], mar_path)


def archive_mar(
    model_name: str,
    handler: str,
    serialized_file: Path,
    extra_files: list[Path],
    mar_path: Path,
) -> Path:
    """Write a MAR registering as model_name to mar_path (file name independent of model_name).

    handler is a handler file's path or the name of one of TorchServe's stock handlers.
    The archiver names its output <model_name>.mar and stages files under
    $TMPDIR/<model_name>, so each call gets a private TMPDIR and export folder;
    otherwise two builds of the same model running at once would clobber each other.
    """
    with tempfile.TemporaryDirectory(prefix="tiergate-mar-") as scratch:
        export_dir = Path(scratch) / "export"
        export_dir.mkdir()
        command = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name", model_name,
            "--version", MODEL_VERSION,
            "--handler", handler,
            "--serialized-file", str(serialized_file),
            "--export-path", str(export_dir),
            # Weights barely compress; storing keeps builds and worker start-up fast.
            "--archive-format", "zip-store",
        ]  # fmt: skip
        if extra_files:
            command += ["--extra-files", ",".join(str(path) for path in extra_files)]
        result = subprocess.run(
            command, env={**os.environ, "TMPDIR": scratch}, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed for {mar_path.name}:\n{result.stderr}")
        mar_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(export_dir / f"{model_name}.mar", mar_path)
    return mar_path
