"""Optional OpenTelemetry traces: one span per request, child spans for auth, quota, cache, each upstream
call and each local forward pass; a caller's W3C `traceparent` is honoured.

Off by default, and then free: `Tracing` hands out one shared span object that does nothing, and nothing
imports OpenTelemetry. `tracing.enabled: true` (with the `otel` extra installed) swaps in `OtelTracing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from proxy.settings import TracingSettings

Attribute = str | int | float | bool


class Span(Protocol):
    def set_attribute(self, key: str, value: Attribute) -> None: ...


class _NoSpan:
    """Every span while tracing is off: entered, set and left for nothing."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Attribute) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_SPAN = _NoSpan()


class Tracing:
    """Tracing off."""

    enabled = False

    def request(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Span]:
        """The span of one HTTP request, child of the caller's `traceparent` when it sent one."""
        return NO_SPAN

    def span(self, name: str, client: bool = False) -> AbstractContextManager[Span]:
        """A child of the current span; `client`: a call to another service."""
        return NO_SPAN

    def capture(self) -> object:
        """The current trace context, to parent a span that is recorded later, elsewhere."""
        return None

    def record(self, name: str, parent: object, start_ns: int, end_ns: int,
               attributes: Mapping[str, Attribute]) -> None:
        """A span that already happened (a forward pass shared by several requests), under `parent`."""

    def shutdown(self) -> None:
        """Flush what is still buffered."""


class OtelTracing(Tracing):
    """Spans exported over OTLP, or to `exporter` (tests pass the SDK's InMemorySpanExporter)."""

    enabled = True

    def __init__(self, settings: TracingSettings, exporter: Any = None) -> None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as err:
            raise ImportError("tracing.enabled needs OpenTelemetry: pip install 'embedgate[otel]'") from err
        self._context = context
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._internal = trace.SpanKind.INTERNAL
        self._propagator = TraceContextTextMapPropagator()
        # Not the global provider: the gateway's traces stay its own, and tests can run several gateways.
        self.provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}),
                                       sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            self.provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings)))
        self._tracer = self.provider.get_tracer("embedgate")

    def request(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Span]:
        parent = self._propagator.extract(headers)
        return self._tracer.start_as_current_span(name, context=parent, kind=self._server)

    def span(self, name: str, client: bool = False) -> AbstractContextManager[Span]:
        return self._tracer.start_as_current_span(name, kind=self._client if client else self._internal)

    def capture(self) -> object:
        return self._context.get_current()

    def record(self, name: str, parent: object, start_ns: int, end_ns: int,
               attributes: Mapping[str, Attribute]) -> None:
        span = self._tracer.start_span(name, context=parent, start_time=start_ns,  # type: ignore[arg-type]
                                       attributes=attributes)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _otlp_exporter(settings: TracingSettings) -> Any:
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.endpoint) if settings.endpoint else GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if not settings.endpoint:
        return HttpExporter()
    # A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: the exporter itself wants the traces path.
    endpoint = settings.endpoint.rstrip("/")
    return HttpExporter(endpoint=endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces")


def build_tracing(settings: TracingSettings) -> Tracing:
    return OtelTracing(settings) if settings.enabled else Tracing()
