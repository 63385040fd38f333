"""`tiergate`: run the local stack, inspect it, build model artifacts."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from .config import ConfigError, load_config
from .shadow_report import ReportError, write_report
from .stack import StackError, read_status, reload_stack, run_supervisor, start_detached, stop_stack

DEFAULT_STATE_DIR = Path(".tiergate")


def default_config() -> Path:
    return Path(str(resources.files("gateway").joinpath("tiergate.yaml")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiergate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the pools and the gateway")
    up.add_argument("--config", type=Path, default=None, help="gateway YAML (default: the bundled local stack)")
    up.add_argument("--detach", action="store_true", help="return once ready; stop later with `tiergate down`")
    _state_dir(up)

    down = commands.add_parser("down", help="stop everything `tiergate up` started")
    _state_dir(down)

    reload = commands.add_parser("reload", help="apply the config file's gateway policy to the running stack")
    _state_dir(reload)

    status = commands.add_parser("status", help="show the running stack")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _state_dir(status)

    build = commands.add_parser("build-models", help="build the model artifacts (MARs)")
    build.add_argument("--config", type=Path, default=None)

    commands.add_parser(
        "build-model",
        help="build one model's MARs from a recipe or a model source: --name N (--factory PKG.MOD:FN | --program FILE.pt2"
        " | --torchvision ARCH [--weights FILE] | --recipe R) (model/recipes.py; --help)",
    )

    check = commands.add_parser("check-config", help="validate a gateway YAML file (and cluster settings)")
    check.add_argument("config", type=Path)
    check.add_argument("--cluster", type=Path, default=None, help="cluster settings YAML for render-k8s")

    commands.add_parser(
        "render-k8s", help="render k8s/ from a gateway config and cluster settings (--config FILE --cluster FILE --out DIR)"
    )
    commands.add_parser(
        "bench", help="gateway overhead vs NGINX, a FastAPI proxy and direct TorchServe (bench/overhead.py; --help)"
    )

    shadow = commands.add_parser("shadow", help="shadow tests")
    report = shadow.add_subparsers(dest="shadow_command", required=True).add_parser(
        "report", help="summary table and PNG plot from the shadow log"
    )
    report.add_argument("name", nargs="?", help="one shadow test (default: all)")
    report.add_argument("--config", type=Path, default=None, help="gateway YAML naming the shadow_log")
    report.add_argument("--log", type=Path, default=None, help="the shadow log itself (overrides --config)")
    report.add_argument("--plot", type=Path, default=None, help="PNG to write (default: next to the log)")

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["render-k8s"]:  # its options belong to the renderer
        from .k8s_render import main as render_k8s

        return render_k8s(argv[1:])
    if argv[:1] == ["build-model"]:  # its options belong to the model builder
        from model.recipes import main as build_model

        return build_model(argv[1:])
    if argv[:1] == ["bench"]:  # its options belong to the harness
        from .bench import main as bench

        return bench(argv[1:])
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, StackError, ReportError) as exc:
        print(f"tiergate: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        config_path = args.config or default_config()
        load_config(config_path)  # fail on a bad file before starting anything
        if args.detach:
            state = start_detached(config_path, args.state_dir)
            print(f"tiergate ready in {state['ready_after_s']}s at {state['gateway_url']}")
            return 0
        return run_supervisor(config_path, args.state_dir, announce=lambda line: print(line, flush=True))
    if args.command == "down":
        stopped = stop_stack(args.state_dir)
        print("stopped" if stopped else "nothing running")
        return 0
    if args.command == "reload":
        reload_stack(args.state_dir)
        print("reloaded")
        return 0
    if args.command == "status":
        state = read_status(args.state_dir)
        if args.json:
            print(json.dumps(state, indent=2))
        else:
            _print_status(state)
        return 0 if state["state"] != "stopped" else 3
    if args.command == "build-models":
        from .stack import build_artifacts

        build_artifacts(load_config(args.config or default_config()))
        return 0
    if args.command == "check-config":
        config = load_config(args.config)
        print(f"{args.config}: ok ({len(config.tiers)} tiers, {len(config.pools)} pools)")
        if args.cluster is not None:
            from .k8s_render import render
            from .k8s_render.settings import load_cluster_settings

            settings = load_cluster_settings(args.cluster)
            render(config, settings)  # what the cluster cannot honour is refused here too
            print(f"{args.cluster}: ok (namespace {settings.namespace}; {args.config} renders)")
        return 0
    if args.command == "shadow":
        log = args.log or load_config(args.config or default_config()).shadow_log
        print(write_report(log, args.name, args.plot))
        return 0
    raise AssertionError(args.command)


def _state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where the running stack is recorded")


def _print_status(state: dict) -> None:
    print(f"gateway: {state.get('gateway_url', '-')} ({state['state']})")
    for pool in state["pools"]:
        print(
            f"  pool {pool['name']}: {pool['inference_url']} backend={pool['backend']} pid={pool['pid']}"
            f" restarts={pool['restarts']} {pool['state']}"
        )


if __name__ == "__main__":
    sys.exit(main())
