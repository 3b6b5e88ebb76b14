"""`embedgate serve | check-config | keys | teams | usage`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from providers.http import HttpClient
from proxy.admin_cli import add_admin_commands
from proxy.settings import ConfigError, Settings, load_settings

log = logging.getLogger("embedgate")


def settings_for(path: str | None) -> Settings:
    """`--config` wins, then $EMBEDGATE_CONFIG, then the embedded default."""
    return load_settings(path or os.environ.get("EMBEDGATE_CONFIG") or None)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.app import create_app

    settings = settings_for(args.config)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    app = create_app(settings)
    log.info("embedgate serving %d model entries on http://%s:%d", len(settings.models), host, port)
    # handler_cancellation: a client that hangs up cancels its request, and so the upstream calls only it
    # waited on (its charge is refunded).
    web.run_app(app, host=host, port=port, loop=_new_loop(), print=None, handler_cancellation=True,
                access_log_format='%a "%r" %s %b %Tfs')
    return 0


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
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config and print its route table")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    add_admin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("EMBEDGATE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"embedgate: config error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
