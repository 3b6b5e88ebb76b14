"""What one request leaves behind: its request id, its metrics, its trace span's attributes and one log line
(which replaces aiohttp's access log). The middleware in proxy/app.py drives it; handlers fill the
`Exchange` as they learn the model, the team and what was served.

The log line holds bounded, non-secret values only: never a key, an Authorization header or an input text;
the model and team are the metrics' labels. It costs nothing when its level is off, and little when it is on:
lines are made and written in batches (`AccessLog`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from proxy.logs import TurnHandler, direct_handler
from proxy.metrics import NO_TEAM, Metrics
from proxy.tracing import Span, Tracing

ACCESS = logging.getLogger("embedgate.access")
REQUEST_ID = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# Probes and scrapes: no trace, and their log line only at DEBUG.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_LOGGED_PATH = 200
CLIENT_GONE = 499  # nginx's status for a client that hung up before the answer
ACCESS_BATCH_SECONDS = 0.05  # how long a request's line may wait for the others of its batch


def request_id(sent: str | None) -> str:
    """The client's id when it is a sane one (short, no spaces or quotes), else a fresh random one."""
    if sent is not None and _SANE_ID.fullmatch(sent):
        return sent
    return os.urandom(16).hex()


@dataclass(slots=True)
class Exchange:
    """One HTTP request, as metrics, the trace and the log line see it."""

    request_id: str
    method: str
    path: str
    started: float  # perf_counter
    quiet: bool = False
    status: int = CLIENT_GONE
    model: str | None = None  # the bounded model label; set only by the embeddings handler
    team: str | None = None
    tokens: int = 0
    inputs: int = 0
    cache: str | None = None
    deployment: str | None = None
    upstream_seconds: float = 0.0
    ended: float = 0.0  # perf_counter when the handler returned; finish() may come a little later

    @classmethod
    def begin(cls, request: web.Request) -> Exchange:
        path = request.path
        return cls(request_id(request.headers.get(REQUEST_ID)), request.method, path, time.perf_counter(),
                   path in QUIET_PATHS)

    def finish(self, metrics: Metrics, access: AccessLog, span: Span, traced: bool) -> None:
        seconds = (self.ended or time.perf_counter()) - self.started
        if self.model is not None:
            metrics.request_done(self.model, self.team or NO_TEAM, self.status, seconds, self.upstream_seconds,
                                 self.tokens, self.inputs)
        if traced:
            self._describe(span)
        level = logging.DEBUG if self.quiet else logging.INFO
        if ACCESS.isEnabledFor(level):
            access.add(self, level, seconds)

    def _fields(self, seconds: float) -> dict[str, object]:
        fields: dict[str, object] = {
            "request_id": self.request_id, "method": self.method, "path": self.path[:MAX_LOGGED_PATH],
            "status": self.status, "latency_ms": round(seconds * 1000, 3),
        }
        if self.model is not None:
            fields["model"] = self.model
            fields["team"] = self.team
        if self.status == 200 and self.model is not None:
            fields["overhead_ms"] = round(max(0.0, seconds - self.upstream_seconds) * 1000, 3)
            fields["tokens"] = self.tokens
            fields["inputs"] = self.inputs
            fields["cache"] = self.cache
            fields["deployment"] = self.deployment
        return fields

    def _describe(self, span: Span) -> None:
        span.set_attribute("http.request.method", self.method)
        span.set_attribute("http.response.status_code", self.status)
        span.set_attribute("embedgate.request_id", self.request_id)
        if self.model is not None:
            span.set_attribute("embedgate.model", self.model)
        if self.team is not None:
            span.set_attribute("embedgate.team", self.team)
        if self.status == 200 and self.model is not None:
            span.set_attribute("embedgate.tokens", self.tokens)
            span.set_attribute("embedgate.cache", self.cache or "")
            span.set_attribute("embedgate.deployment", self.deployment or "")
        if self.status >= 500:
            span.set_attribute("error.type", str(self.status))


EXCHANGE = web.RequestKey("exchange", Exchange)


class AccessLog:
    """The per-request lines, made and handed to logging in batches: a request leaves its finished `Exchange`
    here, and at most `ACCESS_BATCH_SECONDS` later the lines of every request since are made, each with the
    time its request ended, and go out in one write (proxy/logs.py). Made one at a time, on each request's
    own turn of the loop, a line was the largest single step the gateway added to an open request on top of
    aiohttp (bench: 30 to 45 µs of CPU per request at 32 clients, 80 to 100 µs one at a time, where each line
    was also a system call of its own). `flush` writes what waits: at shutdown, and by the timer. A line is
    lost only with a process killed outright, as with any buffered log."""

    def __init__(self, batch_seconds: float | None = None) -> None:
        self._batch_seconds = ACCESS_BATCH_SECONDS if batch_seconds is None else batch_seconds
        self._pending: list[tuple[Exchange, int, float, float]] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, exchange: Exchange, level: int, seconds: float) -> None:
        self._pending.append((exchange, level, seconds, time.time()))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._batch_seconds, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        # Where logging is as `configure` set it up, a line is made as its formatter would make it from a record,
        # without the record or the walk to the handler (half of what a line cost). A level without that path
        # has its records dropped by that handler, or else no level has it: the two paths never both write.
        direct = {level: direct_handler(ACCESS, level) for level in {entry[1] for entry in pending}}
        lines: list[str] = []
        to: TurnHandler | None = None
        for exchange, level, seconds, ended in pending:
            found = direct[level]
            if found is not None:
                to, formatter = found
                lines.append(formatter.line(ACCESS.name, level, ended, "request", exchange._fields(seconds)))
                continue
            # Straight to the handlers: Logger.log would walk the stack for a caller nobody reads.
            record = ACCESS.makeRecord(ACCESS.name, level, __file__, 0, "request", (), None,
                                       extra={"fields": exchange._fields(seconds)})
            record.created, record.msecs = ended, ended % 1 * 1000  # when the request ended, not the batch
            ACCESS.handle(record)
        if to is not None:
            to.emit_lines(lines)


class LocalQueueWatch:
    """A local model's batching queue as metrics (batch size, queue depth) and trace spans (forward passes)."""

    def __init__(self, metrics: Metrics, tracing: Tracing, deployment: str) -> None:
        self._depth = metrics.local_queue_depth.labels(deployment)
        self._batch = metrics.local_batch_size.labels(deployment)
        self._tracing = tracing
        self._depth.set(0)

    def job(self) -> object:
        return self._tracing.capture()

    def queue_depth(self, inputs: int) -> None:
        self._depth.set(inputs)

    def forward(self, inputs: int, start_ns: int, end_ns: int, jobs: Sequence[object]) -> None:
        self._batch.observe(inputs)
        if self._tracing.enabled:  # one span per request it served, in that request's trace
            attributes = {"embedgate.batch_inputs": inputs}
            for parent in jobs:
                self._tracing.record("local.forward", parent, start_ns, end_ns, attributes)
