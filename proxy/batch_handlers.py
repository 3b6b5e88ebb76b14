"""The Files and Batches HTTP handlers, as OpenAI's API has them: parse, call `Files`/`Batches`, render."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.batches import BatchCreate
from proxy.errors import InvalidRequest, ServiceUnavailable, UnsupportedMediaType
from proxy.files import DEFAULT_PAGE, MAX_PAGE
from proxy.handlers import GATEWAY, authenticate, json_response, read_model
from proxy.schema import BatchList, BatchObject, FileDeleted, FileList, FileObject
from proxy.store import STORE_ERRORS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UPLOAD_PURPOSES = ("batch",)
READ_CHUNK = 1 << 20


def store_backed(handler: Handler) -> Handler:
    """Files and batches live in the store: while it is down they answer 503, not 500."""

    @wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        try:
            return await handler(request)
        except STORE_ERRORS as err:
            gw.outages.failed("batch", err)
            raise ServiceUnavailable("The store is unavailable; please retry shortly.") from err

    return wrapper


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE}, got {raw!r}.", param="limit",
                             code="invalid_value")
    return int(raw)


async def _read_part(part: BodyPartReader, max_bytes: int) -> bytes:
    """The part's bytes, refused with a clear 400 as soon as they pass `files.max_bytes`."""
    data = bytearray()
    while chunk := await part.read_chunk(READ_CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise InvalidRequest(f"The file is larger than the limit of {max_bytes} bytes (files.max_bytes).",
                                 param="file", code="file_too_large")
    return bytes(data)


async def _read_form(request: web.Request, max_bytes: int) -> tuple[str | None, str | None, bytes | None]:
    """The `purpose` and `file` fields of a multipart upload (other fields are ignored)."""
    purpose = filename = data = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or "upload.jsonl"
            data = await _read_part(part, max_bytes)
    return purpose, filename, data


@store_backed
async def upload_file(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType("Upload files as multipart/form-data with the fields 'file' and 'purpose'.",
                                   param="Content-Type")
    settings = gw.settings.files
    try:
        purpose, filename, data = await _read_form(request, settings.max_bytes)
    except (ValueError, AssertionError, HttpProcessingError) as err:  # aiohttp's ways of saying "not multipart"
        raise InvalidRequest("The multipart/form-data body could not be read; send the fields 'file' and "
                             "'purpose'.", param="file", code="invalid_multipart") from err
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}: this gateway keeps files for "
                             f"the Batch API only; got {purpose!r}.", param="purpose", code="invalid_value")
    if data is None or filename is None:
        raise InvalidRequest("The 'file' field is missing.", param="file", code="missing_required_parameter")
    lines = sum(1 for line in data.splitlines() if line.strip())
    if lines > settings.max_lines:
        raise InvalidRequest(f"The file has {lines} lines; the limit is {settings.max_lines} (files.max_lines).",
                             param="file", code="too_many_lines")
    record = await gw.files.create(principal.team if principal else None, filename, purpose, data)
    return json_response(FileObject.model_validate(record.view()))


@store_backed
async def list_files(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}.", param="order", code="invalid_value")
    found = await gw.files.page(principal, request.query.get("after"), _limit(request, MAX_PAGE),
                                order == "desc", request.query.get("purpose"))
    return json_response(FileList.model_validate(found))


@store_backed
async def get_file(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    record = await gw.files.get(await authenticate(request), request.match_info["file_id"])
    return json_response(FileObject.model_validate(record.view()))


@store_backed
async def file_content(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    record = await gw.files.get(await authenticate(request), request.match_info["file_id"])
    return web.Response(body=await gw.files.read(record), content_type="application/octet-stream")


@store_backed
async def delete_file(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    record = await gw.files.get(await authenticate(request), request.match_info["file_id"])
    await gw.files.delete(record)
    return json_response(FileDeleted(id=record.id, deleted=True))


@store_backed
async def create_batch(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    state = await gw.batches.create(principal, await read_model(request, BatchCreate))
    return json_response(BatchObject.model_validate(state.view()))


@store_backed
async def get_batch(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    state = await gw.batches.get(await authenticate(request), request.match_info["batch_id"])
    return json_response(BatchObject.model_validate(state.view()))


@store_backed
async def list_batches(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    found = await gw.batches.page(principal, request.query.get("after"), _limit(request, DEFAULT_PAGE))
    return json_response(BatchList.model_validate(found))


@store_backed
async def cancel_batch(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    state = await gw.batches.cancel(await authenticate(request), request.match_info["batch_id"])
    return json_response(BatchObject.model_validate(state.view()))


def setup_batch_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)

