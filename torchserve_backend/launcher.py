"""Start, probe and stop one local TorchServe process per pool.

Each pool gets its own ports, TMPDIR, log and metrics directories, so two pools (or
two test runs in different network namespaces) never share state. A pool counts as
started when every one of its models has a READY worker, as TorchServe's management API
describes it; that needs no input, so it works for MARs whose input tiergate does not
know. For tiergate's own handler, the customized describe then asks the worker which
backend it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.config import GatewayConfig, LocalLaunch
from gateway.model_config import DEFAULT_VERSION as DEFAULT_MODEL_VERSION
from gateway.run_settings import pool_launch, pool_mars, properties_text, torchserve_properties

from .processes import alive, processes_with_env, stop_group, stop_processes

LOG_FILES = ("ts_log.log", "model_log.log")
# Every process of a pool (wrapper, Java frontend, workers) inherits this variable naming the
# pool's workdir: how a start finds what a crashed run of the same pool left behind.
POOL_ENV = "TIERGATE_POOL_DIR"
# Where TorchServe 0.12's wrapper records its Java frontend's pid: tempfile.gettempdir(),
# the pool's TMPDIR. A live TorchServe named there makes the next `torchserve --start` exit.
PID_FILE = ".model_server.pid"
# What wait_ready reports for a model whose handler does not say which backend it runs.
BACKEND_UNREPORTED = "unreported"
# TorchServe writes its keys here (in its working directory, the pool's workdir) at start-up:
# {"management": {"key": ...}, "inference": {"key": ...}, ...}, new ones at every start.
KEY_FILE = "key_file.json"
# The inference key alone, where the gateway reads it (its pools' `auth_token_file`).
INFERENCE_TOKEN_FILE = "inference.token"
# The management key alone, for the gateway's readiness check (describe: read-only use).
MANAGEMENT_TOKEN_FILE = "management.token"


class PoolStartError(RuntimeError):
    """A pool that did not come up; the message carries the tail of its logs."""


@dataclass(frozen=True)
class PoolSpec:
    name: str
    models: tuple[str, ...]
    model_store: Path
    launch: LocalLaunch
    workdir: Path
    # model → the MAR file it loads instead of <model>-<variant>.mar (the model config's `mar:`)
    mars: Mapping[str, str] = field(default_factory=dict)
    # model → the version its MAR declares (the model config's `version:`; default 1.0)
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: GatewayConfig, pool: str, model_store: Path, workdir: Path) -> PoolSpec:
        """The pool's local launch: exactly the models it serves, each with its MAR."""
        mars = pool_mars(config, pool)
        versions = {model: config.models[model].version for model in mars}
        return cls(pool, tuple(mars), model_store, pool_launch(config, pool), workdir, mars, versions)

    def mar(self, model: str) -> str:
        return self.mars.get(model) or f"{model}-{self.launch.variant}.mar"

    def version(self, model: str) -> str:
        return self.versions.get(model, DEFAULT_MODEL_VERSION)

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.launch.management_port}"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.launch.inference_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.launch.metrics_port}/metrics"

    @property
    def inference_token_file(self) -> Path:
        return self.workdir / INFERENCE_TOKEN_FILE

    @property
    def management_token_file(self) -> Path:
        return self.workdir / MANAGEMENT_TOKEN_FILE


class PoolProcess:
    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def group(self) -> int | None:
        """The process group the wrapper leads: it outlives the wrapper while the frontend lives."""
        return self.pid

    @property
    def running(self) -> bool:
        """The wrapper lives, and so does its Java frontend once the wrapper has named it."""
        if self._process is None or self._process.poll() is not None:
            return False
        frontend = self._frontend_pid()
        return frontend is None or alive(frontend)

    def _frontend_pid(self) -> int | None:
        try:
            return int((self.spec.workdir / "tmp" / PID_FILE).read_text())
        except (OSError, ValueError):  # not written yet (or half written)
            return None

    def start(self) -> None:
        spec = self.spec
        dirs = {key: spec.workdir / key for key in ("tmp", "logs", "metrics")}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        # What an earlier run of this pool left (its ports, its pid file) must not block this one.
        marker = str(spec.workdir.resolve())
        stop_processes(lambda: processes_with_env(POOL_ENV, marker), grace_s=5.0)
        (dirs["tmp"] / PID_FILE).unlink(missing_ok=True)
        (spec.workdir / KEY_FILE).unlink(missing_ok=True)  # the keys read next must be this start's
        config_file = spec.workdir / "config.properties"
        config_file.write_text(render_properties(spec))
        env = {
            **os.environ,
            POOL_ENV: marker,
            "TMPDIR": str(dirs["tmp"]),
            # TorchServe names its worker sockets <java.io.tmpdir>/.ts.sock.<port>, ports
            # counting from 9000 in every instance: without this, pools on one machine
            # share /tmp/.ts.sock.9000 and a frontend can attach to another pool's worker.
            "JAVA_TOOL_OPTIONS": f"-Djava.io.tmpdir={dirs['tmp']}",
            "LOG_LOCATION": str(dirs["logs"]),
            "METRICS_LOCATION": str(dirs["metrics"]),
            # Pools share the machine's cores: each gets a fixed share instead of all of them.
            "OMP_NUM_THREADS": str(spec.launch.threads),
            "MKL_NUM_THREADS": str(spec.launch.threads),
            # Workers must run in this interpreter's environment (torch, PIL, pyyaml).
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        command = [
            str(Path(sys.executable).parent / "torchserve"),
            "--start", "--foreground", "--ncs",
            "--model-store", str(spec.model_store),
            "--ts-config", str(config_file),
        ]
        if not spec.launch.token_auth:
            command.append("--disable-token-auth")
        stdout = open(spec.workdir / "stdout.log", "wb")
        self._process = subprocess.Popen(
            command, cwd=spec.workdir, env=env, stdout=stdout, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        stdout.close()

    def wait_ready(self, timeout_s: float = 300.0) -> str:
        """Block until every model has a READY worker; return the backends its workers report,
        comma-joined (what `tiergate status` shows for the pool).

        tiergate's handler answers the customized describe with its backend; a model whose
        handler does not say (a stock MAR) adds nothing, unless no model says anything.
        """
        deadline = time.monotonic() + timeout_s
        keys = self._wait_keys(deadline, timeout_s) if self.spec.launch.token_auth else None
        if keys:  # at once: until then, a gateway re-reading the files after a restart has stale keys
            for kind, token in (("inference", self.spec.inference_token_file), ("management", self.spec.management_token_file)):
                staged = token.with_suffix(".new")
                staged.write_text(keys[kind]["key"])
                staged.chmod(0o600)
                staged.replace(token)
        headers = {"Authorization": f"Bearer {keys['management']['key']}"} if keys else {}
        with httpx.Client(base_url=self.spec.management_url, headers=headers, trust_env=False, timeout=30.0) as client:
            backends = {self._wait_model(client, model, deadline, timeout_s) for model in self.spec.models}
        return ",".join(sorted(backends - {BACKEND_UNREPORTED}) or [BACKEND_UNREPORTED])

    def _wait_keys(self, deadline: float, timeout_s: float) -> dict:
        """The keys TorchServe made at this start (token auth stays on: the management API can
        load models and scale workers, and loopback is reachable by every local user)."""
        while time.monotonic() < deadline:
            if not self.running:
                raise PoolStartError(self._failure("exited during start-up"))
            try:
                return json.loads((self.spec.workdir / KEY_FILE).read_text())
            except (OSError, ValueError):  # not written yet (or half written)
                time.sleep(0.2)
        raise PoolStartError(self._failure(f"wrote no {KEY_FILE} in {timeout_s:.0f}s"))

    def _wait_model(self, client: httpx.Client, model: str, deadline: float, timeout_s: float) -> str:
        while time.monotonic() < deadline:
            if not self.running:
                raise PoolStartError(self._failure("exited during start-up"))
            try:
                describe = client.get(f"/models/{model}")
                if worker_ready(describe):
                    self._check_version(model, describe)
                    return reported_backend(client.get(f"/models/{model}", params={"customized": "true"}))
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise PoolStartError(self._failure(f"model {model!r} not ready after {timeout_s:.0f}s"))

    def _check_version(self, model: str, describe: httpx.Response) -> None:
        """The gateway lists and accepts only the configured version: a MAR registered under
        another one would answer every versioned call 404, so the start fails instead."""
        served = served_versions(describe)
        if self.spec.version(model) not in served:
            raise PoolStartError(self._failure(
                f"model {model!r} is served as version {', '.join(served) or '(none)'}, but its config says"
                f" version {self.spec.version(model)!r} (set `version:` to the MAR's version)"
            ))

    def stop(self, grace_s: float = 15.0) -> list[int]:
        """Stop the pool's whole group, also when the wrapper is already dead; return survivors."""
        if self._process is None:
            return []
        survivors = stop_group(self._process.pid, grace_s)
        self._process.wait(timeout=5)  # reap the wrapper
        return survivors

    def log_tail(self, lines: int = 30) -> str:
        chunks = []
        for path in [self.spec.workdir / "stdout.log"] + [
            self.spec.workdir / "logs" / name for name in LOG_FILES
        ]:
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(chunks)

    def _failure(self, what: str) -> str:
        return f"pool {self.spec.name!r} {what}\n{self.log_tail()}"


def worker_ready(describe: httpx.Response) -> bool:
    """A management API describe answer with at least one READY worker (of any version)."""
    if describe.status_code != 200:
        return False
    return any(worker.get("status") == "READY" for version in describe.json() for worker in version.get("workers", []))


def served_versions(describe: httpx.Response) -> list[str]:
    """The model versions a management API describe answer lists (TorchServe's strings)."""
    return [str(version["modelVersion"]) for version in describe.json() if "modelVersion" in version]


def reported_backend(describe: httpx.Response) -> str:
    """The backend a customized describe reports: tiergate's handler answers {"backend": ...}."""
    if describe.status_code != 200:
        return BACKEND_UNREPORTED
    for version in describe.json():
        metadata = version.get("customizedMetadata")
        if isinstance(metadata, str):  # accept it as JSON text as well as an object
            try:
                metadata = json.loads(metadata)
            except ValueError:
                continue
        backend = metadata.get("backend") if isinstance(metadata, dict) else None
        if isinstance(backend, str) and backend:
            return backend
    return BACKEND_UNREPORTED


LOCAL_PROPERTIES_HEADER = """TorchServe config for one tiergate pool; rendered by torchserve_backend.launcher.
Every listener is on loopback, and token auth stays on: any local user reaches loopback,
and the management API loads models and scales workers. The keys are in the pool's
workdir (key_file.json); the gateway reads the inference key from inference.token."""


def render_properties(spec: PoolSpec) -> str:
    mars = {model: spec.mar(model) for model in spec.models}
    versions = {model: spec.version(model) for model in spec.models}
    return properties_text(torchserve_properties(spec.launch, mars, versions, str(spec.model_store)), LOCAL_PROPERTIES_HEADER)
