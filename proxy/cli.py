"""`embedgate serve | check-config | keys | teams | usage | embed`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from providers.http import HttpClient
from proxy.admin_cli import add_admin_commands
from proxy.bulk.command import add_embed_command
from proxy.logs import FORMATS, LEVELS, LogOptions
from proxy.logs import configure as configure_logging
from proxy.settings import ConfigError, Settings, load_settings

log = logging.getLogger("embedgate")


def settings_for(path: str | None) -> Settings:
    """`--config` wins, then $EMBEDGATE_CONFIG, then the embedded default."""
    return load_settings(path or os.environ.get("EMBEDGATE_CONFIG") or None)


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.serve import Listen, serve_workers

    settings = settings_for(args.config)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers if args.workers is not None else settings.server.workers
    return serve_workers(settings, Listen(host, port), workers, args.logs)


def cmd_check_config(args: argparse.Namespace) -> int:
    from proxy.routing import Router

    settings = load_settings(args.file)
    try:
        router = Router(settings.models, HttpClient(), settings.dispatch)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    print(f"{args.file}: OK")
    print(f"{'model':<32} {'deployment':<40} upstream")
    for name, deployment, upstream in router.table():
        print(f"{name:<32} {deployment:<40} {upstream}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedgate", description="OpenAI-compatible embeddings gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config (default: $EMBEDGATE_CONFIG, else the bundled local model)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="processes on the port (default: server.workers, 1)")
    serve.add_argument("--log-format", choices=FORMATS,
                       help="text or json lines (default: $EMBEDGATE_LOG_FORMAT, text)")
    serve.add_argument("--log-level", type=str.upper, choices=LEVELS,
                       help="default: $EMBEDGATE_LOG_LEVEL, INFO; WARNING and above drop the per-request line")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config and print its route table")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    add_admin_commands(sub)
    add_embed_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.logs = LogOptions.resolve(getattr(args, "log_level", None), getattr(args, "log_format", None))
    except ValueError as err:
        print(f"embedgate: {err}", file=sys.stderr)
        return 2
    configure_logging(args.logs)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"embedgate: config error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
