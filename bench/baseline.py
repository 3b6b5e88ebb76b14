"""The floor: a bare aiohttp forwarder, the least a Python gateway on this stack can cost.

One aiohttp server on uvloop whose one handler reads the body, POSTs it to the upstream with a pooled
`aiohttp.ClientSession` and answers with the upstream's bytes: no parsing, validation, auth, metrics or
log line. `make bench` measures it the same way as embedgate, in the same run, so what embedgate adds can
be read against what aiohttp itself costs on this machine (issue 7 names such a loop as its yardstick).
Run as `python -m bench.baseline PORT UPSTREAM_API_BASE`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import aiohttp
import uvloop
from aiohttp import web

from testkit.servers import free_port, stop_process, wait_listening


def forwarder(upstream: str) -> web.Application:
    app = web.Application()
    session: list[aiohttp.ClientSession] = []

    async def open_session(app: web.Application) -> None:
        session.append(aiohttp.ClientSession())

    async def close_session(app: web.Application) -> None:
        await session[0].close()

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": "application/json", "Authorization": request.headers.get("Authorization", "")}
        async with session[0].post(f"{upstream}/embeddings", data=body, headers=headers) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


@contextmanager
def forwarder_process(module: str, upstream: str) -> Iterator[tuple[str, int]]:
    """`python -m MODULE PORT UPSTREAM` (a forwarder) in its own process; yields its api_base and pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, str(port), upstream])
    try:
        wait_listening(port, lambda: proc.poll() is None, module)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        stop_process(proc)


def bare_forwarder(upstream: str) -> AbstractContextManager[tuple[str, int]]:
    """The bare aiohttp forwarder in its own process in front of `upstream`."""
    return forwarder_process("bench.baseline", upstream)


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvloop.install()
    web.run_app(forwarder(upstream), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
