"""Pack model artifacts into TorchServe MARs with torch-model-archiver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL_VERSION = "1.0"


def archive_mar(
    model_name: str,
    handler: Path,
    serialized_file: Path,
    extra_files: list[Path],
    mar_path: Path,
) -> Path:
    """Write a MAR registering as model_name to mar_path (file name independent of model_name).

    The archiver names its output <model_name>.mar and stages files under
    $TMPDIR/<model_name>, so each call gets a private TMPDIR and export folder;
    otherwise two builds of the same arch running at once would clobber each other.
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
            "--handler", str(handler),
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
