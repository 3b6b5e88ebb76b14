"""The admin HTTP API (master key only): keys, teams, usage. Thin handlers over `Accounts` and `Usage`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from aiohttp import web

from proxy.accounts import KeyCreate, KeyPatch, TeamConfig, key_view
from proxy.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from proxy.handlers import GATEWAY, json_response, read_model
from proxy.schema import CreatedKey, KeyList, RevokedKey
from proxy.store import STORE_ERRORS
from proxy.usage import UsageFilter, parse_range

Handler = Callable[[web.Request], Awaitable[web.Response]]


def admin_only(handler: Handler) -> Handler:
    """Master key required; store failures become 503, not 500."""

    @wraps(handler)
    async def wrapper(request: web.Request) -> web.Response:
        gw = request.app[GATEWAY]
        if not gw.settings.auth.master_key:
            raise PermissionDenied("The admin API is disabled: set auth.master_key to enable it.",
                                   code="admin_disabled")
        if not gw.auth.is_master(request.headers.get("Authorization")):
            raise AuthenticationFailed("The admin API needs the master key as Bearer token.")
        try:
            return await handler(request)
        except STORE_ERRORS as err:
            gw.outages.failed("admin", err)
            raise ServiceUnavailable("The store is unavailable; please retry shortly.") from err

    return wrapper


@admin_only
async def create_key(request: web.Request) -> web.Response:
    record, secret = await request.app[GATEWAY].accounts.create_key(await read_model(request, KeyCreate))
    return json_response(CreatedKey(**key_view(record).model_dump(), key=secret), status=201)


@admin_only
async def list_keys(request: web.Request) -> web.Response:
    records = await request.app[GATEWAY].accounts.list_keys(request.query.get("team") or None)
    return json_response(KeyList(data=[key_view(r) for r in records]))


@admin_only
async def get_key(request: web.Request) -> web.Response:
    return json_response(key_view(await request.app[GATEWAY].accounts.get_key(request.match_info["key_id"])))


@admin_only
async def patch_key(request: web.Request) -> web.Response:
    body = await read_model(request, KeyPatch)
    record = await request.app[GATEWAY].accounts.patch_key(request.match_info["key_id"], body)
    return json_response(key_view(record))


@admin_only
async def revoke_key(request: web.Request) -> web.Response:
    record = await request.app[GATEWAY].accounts.revoke_key(request.match_info["key_id"])
    return json_response(RevokedKey(**key_view(record).model_dump()))


@admin_only
async def put_team(request: web.Request) -> web.Response:
    config = await read_model(request, TeamConfig)
    return json_response(await request.app[GATEWAY].accounts.put_team(request.match_info["team"], config))


@admin_only
async def get_team(request: web.Request) -> web.Response:
    return json_response(await request.app[GATEWAY].accounts.get_team(request.match_info["team"]))


@admin_only
async def usage(request: web.Request) -> web.Response:
    q, usage = request.query, request.app[GATEWAY].usage
    first, last = parse_range(q.get("start"), q.get("end"), await usage.today())
    where = UsageFilter(team=q.get("team") or None, key=q.get("key") or None,
                        user=q.get("user") or None, model=q.get("model") or None)
    return json_response(await usage.query(where, first, last))


def setup_admin_routes(app: web.Application) -> None:
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_get("/admin/keys/{key_id}", get_key)
    app.router.add_patch("/admin/keys/{key_id}", patch_key)
    app.router.add_delete("/admin/keys/{key_id}", revoke_key)
    app.router.add_put("/admin/teams/{team}", put_team)
    app.router.add_get("/admin/teams/{team}", get_team)
    app.router.add_get("/admin/usage", usage)
