"""The local stack behind `tiergate up/down/status`: TorchServe pools plus the gateway.

`up` runs a supervisor: it builds missing model artifacts, starts one TorchServe
process per pool, starts a local Ray instance (token auth on, bound to loopback)
with the gateway application, and records everything it started in a state file.
`down` stops exactly what that file names.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import httpx

from torchserve_backend.launcher import INFERENCE_TOKEN_FILE, KEY_FILE, MANAGEMENT_TOKEN_FILE, PoolProcess, PoolSpec, PoolStartError
from torchserve_backend.processes import alive, processes_with_env, stop_group, stop_processes

from . import ingress_guard
from .config import GatewayConfig, load_config
from .metrics import SUPERVISOR_METRICS_FILE
from .pool_keeper import PoolKeeper, write_restart_metrics
from .run_settings import ingress_settings, replica_timeout_s

READY_TIMEOUT_S = 600.0
# How long stopping lets accepted requests finish before Ray is shut down regardless
# (the longest tier deadline of the bundled config is 30 s; most calls take well under 1 s).
DRAIN_TIMEOUT_S = 20.0
# Every process of the stack inherits this variable naming the stack's state dir: how `up` and
# `down` find what a crashed run left (TorchServe outlives its wrapper, Ray's agents their
# raylet, HAProxy its actor).
STACK_ENV = "TIERGATE_STACK_DIR"


class StackError(RuntimeError):
    pass


class StatePaths:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir.resolve()
        self.state = self.root / "state.json"
        self.log = self.root / "supervisor.log"
        self.pools = self.root / "pools"
        self.metrics = self.root / "metrics"
        # HAProxy's admin socket path must stay under 97 bytes and Ray appends a 56-byte
        # node id, so this one lives under a short per-stack name instead of the state dir.
        self.haproxy = Path(tempfile.gettempdir()) / f"tiergate-{hashlib.sha1(bytes(self.root)).hexdigest()[:8]}"


def gateway_url(config: GatewayConfig) -> str:
    return f"http://{config.host}:{config.port}"


def build_artifacts(config: GatewayConfig) -> None:
    """Build the MARs of every model with a `build:` recipe unless they are up to date (the build
    decides); a model without one brings its own MAR.

    Stacks sharing an artifacts dir take turns: the second finds the first's build current.
    """
    from model.recipes import build_model

    config.artifacts_dir.mkdir(parents=True, exist_ok=True)
    with open(config.artifacts_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, model in config.models.items():
            if model.build is not None:
                build_model(config.artifacts_dir, name, model.build, mar=model.mar)


def run_supervisor(config_path: Path, state_dir: Path, announce: Callable[[str], None] = print) -> int:
    """Start the whole stack, block until SIGTERM/SIGINT, then stop it. Returns an exit code."""
    config = started_with = load_config(config_path)
    paths = StatePaths(state_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    if paths.state.exists() and _alive(json.loads(paths.state.read_text()).get("supervisor_pid")):
        raise StackError(f"a stack is already running from {paths.root}; run `tiergate down` first")
    _stop_leftovers(paths)  # a crashed run's would hold the ports
    os.environ[STACK_ENV] = str(paths.root)
    os.environ.update(LOCAL_RAY_ENVIRONMENT)  # before Ray is imported: it reads its auth mode then
    stop, reload = threading.Event(), threading.Event()
    _handle_signals(stop, reload)

    started = time.monotonic()
    keepers: list[PoolKeeper] = []
    reloads, reload_error, ready_after = 0, None, 0.0
    persisting = threading.Lock()  # restarts persist from their own threads

    def persist() -> None:
        with persisting:
            if stop.is_set():  # the state file goes away with the stack
                return
            _write_state(paths, config_path, config, keepers, ready_after, reloads, reload_error)
            write_restart_metrics(paths.metrics / SUPERVISOR_METRICS_FILE, keepers)

    try:
        announce("building model artifacts (skipped when up to date)")
        build_artifacts(config)
        for name, pool in config.pools.items():
            if pool.local is None:
                continue
            process = PoolProcess(
                PoolSpec.from_config(config, name, (config.artifacts_dir / "model-store").resolve(), paths.pools / name)
            )
            keeper = PoolKeeper(process, stop, persist, announce)
            keeper.start()
            keepers.append(keeper)
        announce(f"started {len(keepers)} TorchServe pool(s); starting Ray Serve")
        _start_gateway(config, paths)
        # Ray's core worker, started by ray.init, installs its own SIGTERM handler (it logs a
        # stack trace and dies, skipping the drain below): ours goes back on top.
        _handle_signals(stop, reload)
        for keeper in keepers:
            keeper.wait_ready()
        _wait_gateway_ready(config)
        ready_after = time.monotonic() - started

        persist()
        announce(f"tiergate ready in {ready_after:.1f}s at {gateway_url(config)}")
        for keeper in keepers:
            announce(f"  pool {keeper.name}: {keeper.process.spec.inference_url} ({keeper.backend})")
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                reloads += 1
                config, reload_error = _reload_gateway(config_path, config, paths, announce, started_with)
                persist()
            for keeper in keepers:
                keeper.check()
        announce("stopping")
        return 0
    except (PoolStartError, StackError) as exc:
        announce(f"tiergate failed to start: {exc}")
        return 1
    finally:
        stop.set()
        began = time.monotonic()
        _stop_gateway(config, paths)
        with ThreadPoolExecutor(max(1, len(keepers))) as executor:
            survivors = [pid for left in executor.map(PoolKeeper.stop, keepers) for pid in left]
        survivors += _stop_leftovers(paths)
        paths.state.unlink(missing_ok=True)
        if survivors:
            announce(f"processes {survivors} survived SIGKILL")
        else:
            announce(f"stopped in {time.monotonic() - began:.1f}s")


def _stop_leftovers(paths: StatePaths) -> list[int]:
    """Stop every process of this stack but this one; return what survived."""
    ours = str(paths.root)
    return stop_processes(lambda: [pid for pid in processes_with_env(STACK_ENV, ours) if pid != os.getpid()], 2.0)


def _handle_signals(stop: threading.Event, reload: threading.Event) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())


def _start_gateway(config: GatewayConfig, paths: StatePaths) -> None:
    import ray
    from ray import serve

    shutil.rmtree(paths.metrics, ignore_errors=True)
    paths.metrics.mkdir(parents=True)
    os.environ.update(ingress_environment(config, paths.haproxy))
    ray.init(
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace="tiergate",
        logging_level="WARNING",
        log_to_driver=False,
    )
    serve.start(http_options={"host": config.host, "port": config.port})
    _deploy(config, paths)


def _deploy(config: GatewayConfig, paths: StatePaths) -> GatewayConfig:
    """Hand the application's config to Serve's controller: the declarative path (the one
    `serve deploy` and KubeRay take), on which Serve reconfigures running replicas when only
    `user_config` changed. (`serve.run` gives every deploy a new random version, so each
    reload would replace the replicas: ~30 s and a stall of traffic.) The dashboard that
    `serve deploy` talks to is off here, so the call goes to the controller through the
    Serve client, as the dashboard's handler does."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from .app import application

    deployed = _with_local_tokens(config, paths)
    runtime_env = {"env_vars": {"PROMETHEUS_MULTIPROC_DIR": str(paths.metrics)}}
    _get_global_client().deploy_apps(ServeDeploySchema(applications=[application(deployed, runtime_env)]))
    return deployed


def _with_local_tokens(config: GatewayConfig, paths: StatePaths) -> GatewayConfig:
    """The config as the replicas get it: each local pool's calls carry the inference key its
    TorchServe made (token auth stays on), read from the file the launcher keeps current, and
    readiness asks the pool's management API (with its key) that each model has a READY worker."""
    pools = {}
    for name, pool in config.pools.items():
        update: dict = {}
        if pool.local is not None and pool.management_url is None:
            update["management_url"] = f"http://127.0.0.1:{pool.local.management_port}"
            if pool.local.token_auth:
                update["management_token_file"] = paths.pools / name / MANAGEMENT_TOKEN_FILE
        if pool.local is not None and pool.local.token_auth and pool.auth_token_file is None:
            update["auth_token_file"] = paths.pools / name / INFERENCE_TOKEN_FILE
        pools[name] = pool.model_copy(update=update)
    return config.model_copy(update={"pools": pools})


def _wait_config_applied(config: GatewayConfig, timeout_s: float = 120.0) -> None:
    """Until Serve has settled (no replica of an earlier version left: a change of shape replaces
    them) and the gateway answers with this config: HAProxy spreads the probes over the
    replicas, so as many answers in a row as there are replicas, plus a couple."""
    wanted, in_a_row = config.digest(), 0
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                running = client.get(gateway_url(config) + "/readyz").json().get("config")
            except (httpx.TransportError, ValueError):
                running = None
            in_a_row = in_a_row + 1 if running == wanted else 0
            if in_a_row >= config.replicas + 2 and _serve_settled():
                return
            time.sleep(0.1)
    raise StackError(f"the gateway did not take the new config within {timeout_s:.0f}s")


def _serve_settled() -> bool:
    """Serve reports the application running and every deployment healthy (not updating)."""
    from ray import serve

    from .run_settings import APPLICATION

    application = serve.status().applications.get(APPLICATION)
    return (
        application is not None and application.status == "RUNNING"
        and all(deployment.status == "HEALTHY" for deployment in application.deployments.values())
    )


# Settings the running stack cannot take without starting again: Ray's ingress reads them once.
RESTART_SETTINGS = (
    "host", "port", "ingress", "client_timeout_s", "header_timeout_s", "max_connections", "max_connections_per_source",
)


def _reload_gateway(
    config_path: Path, running: GatewayConfig, paths: StatePaths, announce: Callable[[str], None],
    started_with: GatewayConfig | None = None,
) -> tuple[GatewayConfig, str | None]:
    """Apply the config file's gateway policy to the running replicas (Serve calls
    `reconfigure` on them; nothing restarts) and return the config now running, with why
    not where it was refused. Pools' local launch settings take a restart of the stack.
    `started_with`: the config `up` started Ray and HAProxy with (default: `running`)."""
    started = started_with or running
    try:
        config = load_config(config_path)
        if changed := [name for name in RESTART_SETTINGS if getattr(config, name) != getattr(started, name)]:
            raise StackError(f"{', '.join(changed)} changed: takes `tiergate down` and `tiergate up`")
        if replica_timeout_s(config) > replica_timeout_s(started):  # HAProxy would cut the longer calls off
            raise StackError(
                f"the tiers' deadlines need HAProxy to wait {replica_timeout_s(config)} s on a replica, it was started"
                f" with {replica_timeout_s(started)} s: takes `tiergate down` and `tiergate up`"
            )
        if config.coalesce_scope != running.coalesce_scope:
            announce("coalesce_scope changed: Serve replaces the gateway replicas (requests in flight finish first)")
        _wait_config_applied(_deploy(config, paths))
    except Exception as exc:  # a failed reload must never take the running stack down
        announce(f"reload refused, keeping the running config: {exc}")
        return running, str(exc)
    announce(f"reloaded {config_path}")
    return config, None


# Ray's token authentication, whatever the caller's environment says: Ray binds some ports on
# every interface (the replicas' inter-deployment gRPC server among them), and its interceptor
# refuses calls without the token (README, "What listens where").
LOCAL_RAY_ENVIRONMENT = {"RAY_AUTH_MODE": "token"}


def ingress_environment(config: GatewayConfig, haproxy_dir: Path) -> dict[str, str]:
    """Ray Serve's ingress settings, read from the environment when Ray starts.

    HAProxy mode sends requests from HAProxy straight to the replicas, skipping Serve's
    Python proxy (measured in BENCHMARKS.md). Its files go in a directory of the stack's
    own, so two stacks on one machine (tests in separate namespaces) never share them.
    HAProxy starts through the ingress guard (gateway/ingress_guard.py), which adds what
    Ray's config cannot be told: slow-header and slow-body cut-offs, a per-source
    connection limit, loopback-only stats and metrics, JSON error pages.
    """
    if config.ingress != "haproxy":
        return ingress_settings(config)
    haproxy_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        wrapper = ingress_guard.prepare(config, haproxy_dir / "guard")
    except ingress_guard.GuardError as exc:
        raise StackError(str(exc)) from None
    return {
        **ingress_settings(config),
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy_dir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy_dir / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy_dir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy_dir / "server-state"),
    }


def _stop_gateway(config: GatewayConfig, paths: StatePaths) -> None:
    """Drain, then stop the local Ray cluster and everything Serve runs on it.

    With HAProxy drained, no accepted request is left and the replicas have nothing to
    finish, so Serve's own shutdown is skipped: it stops deployments one graceful step at a
    time ("Controller failed to shut down within 30.0s"). ray.shutdown() stops the cluster
    this process started (GCS, raylet, and with the raylet every worker).
    """
    import ray

    if not ray.is_initialized():
        return
    try:
        if config.ingress == "haproxy":
            drain_haproxy(paths.haproxy, DRAIN_TIMEOUT_S)
        else:
            from ray import serve

            serve.shutdown()  # Serve's own proxy drains as it stops
    finally:
        ray.shutdown(wait_for_processes=True)


def drain_haproxy(haproxy_dir: Path, timeout_s: float) -> None:
    """Stop admitting and let accepted requests finish, for at most timeout_s.

    serve.shutdown() SIGKILLs HAProxy, resetting every request in flight. A soft stop
    (SIGUSR1) first: HAProxy releases the port (new connections are refused), answers what
    it accepted, closes each keep-alive connection with its next response, and exits.
    Ray restarts an HAProxy that exited after a few health checks (~10 s): a restarted one
    is soft-stopped too, until none is left.
    """
    signalled: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = {pid for pid in haproxy_pids(haproxy_dir) if alive(pid)}
        if not running:
            return
        for pid in running - signalled:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
            signalled.add(pid)
        time.sleep(0.1)


def haproxy_pids(haproxy_dir: Path) -> list[int]:
    """The HAProxy processes Ray Serve runs for this stack (their config lives in haproxy_dir)."""
    ours = str(haproxy_dir) + os.sep
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        if Path(argv[0]).name == "haproxy" and any(arg.startswith(ours) for arg in argv):
            pids.append(int(proc.name))
    return pids


def _wait_gateway_ready(config: GatewayConfig, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(gateway_url(config) + "/readyz")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            time.sleep(0.3)
    raise StackError(f"gateway not ready after {timeout_s:.0f}s ({last})")


def _write_state(
    paths: StatePaths,
    config_path: Path,
    config: GatewayConfig,
    keepers: list[PoolKeeper],
    ready_after: float,
    reloads: int,
    reload_error: str | None,
) -> None:
    state = {
        "supervisor_pid": os.getpid(),
        "reloads": reloads,
        "reload_error": reload_error,
        "config": str(Path(config_path).resolve()),
        "gateway_url": gateway_url(config),
        "ready_after_s": round(ready_after, 2),
        "pools": [
            {
                "name": keeper.name,
                "inference_url": keeper.process.spec.inference_url,
                "metrics_url": keeper.process.spec.metrics_url,
                # TorchServe's keys (token auth stays on): the inference key alone, and all of them.
                "token_file": str(keeper.process.spec.inference_token_file),
                "key_file": str(keeper.process.spec.workdir / KEY_FILE),
                "backend": keeper.backend,
                "pid": keeper.process.pid,
                # What stops the pool when its wrapper (pid) is dead and its frontend is not.
                "group": keeper.process.group,
                "restarts": keeper.restarts,
            }
            for keeper in keepers
        ],
    }
    tmp = paths.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(paths.state)


def start_detached(config_path: Path, state_dir: Path, timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Run the supervisor in the background; return its state once ready, or raise."""
    paths = StatePaths(state_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    if paths.state.exists() and _alive(json.loads(paths.state.read_text()).get("supervisor_pid")):
        raise StackError(f"a stack is already running from {paths.root}; run `tiergate down` first")
    paths.state.unlink(missing_ok=True)
    with open(paths.log, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "up", "--config", str(config_path),
             "--state-dir", str(paths.root)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if paths.state.exists():
            return json.loads(paths.state.read_text())
        if child.poll() is not None:
            raise StackError(f"supervisor exited with code {child.returncode}\n{_tail(paths.log)}")
        time.sleep(0.5)
    stop_group(child.pid, 30.0)
    raise StackError(f"not ready after {timeout_s:.0f}s\n{_tail(paths.log)}")


def stop_stack(state_dir: Path, grace_s: float = 60.0) -> bool:
    """Stop the stack recorded in state_dir; False when none was running."""
    paths = StatePaths(state_dir)
    if not paths.state.exists():
        return False
    state = json.loads(paths.state.read_text())
    supervisor = state["supervisor_pid"]
    # The supervisor shuts Ray and the pools down in order; whatever is left of its
    # session afterwards (it leads its own) is ours to kill, and nothing else is.
    if _alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
    survivors = stop_group(supervisor, 5.0)
    for pool in state["pools"]:  # a dead wrapper's frontend and workers are still in its group
        survivors += stop_group(pool["group"], 5.0)
    survivors += _stop_leftovers(paths)  # what a supervisor that died could not stop
    paths.state.unlink(missing_ok=True)
    if survivors:
        raise StackError(f"processes {survivors} of the stack survived SIGKILL")
    return True


def reload_stack(state_dir: Path, timeout_s: float = 180.0) -> None:
    """Ask the running supervisor to re-read its config file; wait until it has."""
    paths = StatePaths(state_dir)
    if not paths.state.exists():
        raise StackError("nothing running")
    state = json.loads(paths.state.read_text())
    os.kill(state["supervisor_pid"], signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = json.loads(paths.state.read_text())
        if now["reloads"] > state["reloads"]:
            if now["reload_error"]:
                raise StackError(now["reload_error"])
            return
        time.sleep(0.1)
    raise StackError(f"reload not confirmed after {timeout_s:.0f}s\n{_tail(paths.log)}")


def read_status(state_dir: Path) -> dict:
    """What is running now: the recorded stack with each part's live state."""
    paths = StatePaths(state_dir)
    if not paths.state.exists():
        return {"state": "stopped", "pools": []}
    state = json.loads(paths.state.read_text())
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        state["state"] = "ready" if _probe(client, state["gateway_url"] + "/readyz") else "degraded"
        if not _alive(state["supervisor_pid"]):
            state["state"] = "stopped"
        for pool in state["pools"]:
            if not _alive(pool["pid"]):
                pool["state"] = "stopped"
            else:
                pool["state"] = "ready" if _probe(client, pool["inference_url"] + "/ping", _token_header(pool)) else "unhealthy"
    return state


def _probe(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return client.get(url, headers=headers).status_code == 200
    except httpx.TransportError:
        return False


def _token_header(pool: dict) -> dict[str, str]:
    """What TorchServe's token auth wants for the pool's /ping (none for a pool that runs without)."""
    try:
        return {"Authorization": "Bearer " + Path(pool["token_file"]).read_text().strip()}
    except OSError:
        return {}


def _alive(pid: int | None) -> bool:
    """Running or not yet reaped: `down` returns once the supervisor is gone from /proc."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
