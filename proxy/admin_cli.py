"""`embedgate keys|teams|usage`: the admin API from the command line, over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import aiohttp

from proxy.quota import KINDS

DEFAULT_URL = "http://127.0.0.1:8080"


class AdminError(Exception):
    """The admin API refused or could not be reached; the message says why."""


async def _call(args: argparse.Namespace, method: str, path: str, *,
                body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> Any:
    master = args.master_key or os.environ.get("EMBEDGATE_MASTER_KEY")
    if not master:
        raise AdminError("no master key: pass --master-key or set EMBEDGATE_MASTER_KEY")
    params = {k: v for k, v in (query or {}).items() if v}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as session:
            async with session.request(method, args.url.rstrip("/") + path, json=body, params=params,
                                       headers={"Authorization": f"Bearer {master}"}) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    message = data.get("error", {}).get("message") if isinstance(data, dict) else data
                    raise AdminError(f"HTTP {resp.status}: {message}")
                return data
    except (aiohttp.ClientError, TimeoutError) as err:
        raise AdminError(f"cannot reach {args.url}: {err}") from err


def _limits(args: argparse.Namespace, prefix: str = "") -> dict[str, int]:
    values = {kind: getattr(args, prefix + kind) for kind in KINDS}
    return {kind: value for kind, value in values.items() if value is not None}


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None, dict[str, str] | None]:
    """The HTTP call each subcommand makes: method, path, JSON body, query."""
    match args.command, args.action:
        case "keys", "create":
            body: dict[str, Any] = {"team": args.team, "limits": _limits(args)}
            body.update({k: v for k, v in (("name", args.name), ("models", args.model),
                                           ("expires_at", args.expires_at)) if v})
            return "POST", "/admin/keys", body, None
        case "keys", "list":
            return "GET", "/admin/keys", None, {"team": args.team or ""}
        case "keys", "revoke":
            return "DELETE", f"/admin/keys/{args.id}", None, None
        case "teams", "set":
            return "PUT", f"/admin/teams/{args.team}", {"limits": _limits(args),
                                                        "user_limits": _limits(args, "user_")}, None
        case "teams", "show":
            return "GET", f"/admin/teams/{args.team}", None, None
        case _:
            fields = ("team", "key", "user", "model", "start", "end")
            return "GET", "/admin/usage", None, {f: getattr(args, f) or "" for f in fields}


def cmd_admin(args: argparse.Namespace) -> int:
    method, path, body, query = _request(args)
    try:
        data = asyncio.run(_call(args, method, path, body=body, query=query))
    except AdminError as err:
        print(f"embedgate: {err}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2))
    return 0


def _add_limits(parser: argparse.ArgumentParser, prefix: str = "", scope: str = "") -> None:
    for kind in KINDS:
        parser.add_argument(f"--{prefix}{kind.replace('_', '-')}", dest=prefix.replace("-", "_") + kind,
                            type=int, metavar="N", help=f"{scope}{kind}")


def add_admin_commands(sub: Any) -> None:
    """Hook `keys`, `teams` and `usage` into the `embedgate` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    common.add_argument("--master-key", help="default: $EMBEDGATE_MASTER_KEY")
    common.add_argument("--timeout", type=float, default=10.0)

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", parents=[common], help="create a key; its secret is printed once")
    create.add_argument("--team", required=True)
    create.add_argument("--name")
    create.add_argument("--model", action="append", help="allow only this model (repeat for more)")
    create.add_argument("--expires-at", help="ISO 8601 time or epoch seconds")
    _add_limits(create)
    keys.add_parser("list", parents=[common]).add_argument("--team")
    keys.add_parser("revoke", parents=[common]).add_argument("id")

    teams = sub.add_parser("teams", help="set and show team limits").add_subparsers(dest="action", required=True)
    team_set = teams.add_parser("set", parents=[common], help="replace a team's limits and per-user defaults")
    team_set.add_argument("team")
    _add_limits(team_set, scope="team ")
    _add_limits(team_set, "user-", "each user's ")
    teams.add_parser("show", parents=[common]).add_argument("team")

    usage = sub.add_parser("usage", parents=[common], help="usage per UTC day and in total")
    for name in ("team", "key", "user", "model"):
        usage.add_argument(f"--{name}")
    usage.add_argument("--start", help="YYYY-MM-DD (default: 30 days before --end)")
    usage.add_argument("--end", help="YYYY-MM-DD (default: today, UTC)")
    usage.set_defaults(action="show")

    for parser in (keys, teams):
        for choice in parser.choices.values():
            choice.set_defaults(func=cmd_admin)
    usage.set_defaults(func=cmd_admin)
