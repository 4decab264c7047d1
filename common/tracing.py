"""OpenTelemetry traces across the services: one order is one trace.

There is no OpenTelemetry instrumentation for nameko 2.x (opentelemetry-instrumentation-
nameko needs nameko 3); this module is the small one the shop needs, on
``opentelemetry-api``/``-sdk``:

* **Context** travels as W3C Trace Context (``traceparent``, ``tracestate``) in nameko's
  context data, i.e. in the ``nameko.traceparent`` header of every RPC and event message.
  The gateway takes it from the HTTP request's ``traceparent`` header (a client's trace
  is continued) or starts a trace.
* :class:`Tracing` (a dependency every service and the gateway declares) opens one span
  per worker: ``SERVER`` for an RPC or HTTP route, ``CONSUMER`` for an event, a new trace
  for a timer's tick; named ``<service>.<method>``, with the outcome (``ok`` or the error
  code) as ``shop.outcome``; a crash or a 5xx error marks it as an error. The span is the
  worker's current span, so log lines (:mod:`common.logs`) carry its ``trace_id`` and
  ``span_id``.
* :func:`client_span` (used by :mod:`common.rpc`) opens a ``CLIENT`` span per RPC made
  and gives the headers that make the callee's span its child; a call that times out or
  fails is an error span.
* the SQL of each transaction is a child span (opentelemetry-instrumentation-sqlalchemy)
  when spans are exported.

Configuration (config.yml): ``TRACING_EXPORTER`` ``none`` (default: trace ids are made
and propagated, for the logs, but no span is recorded or sent), ``otlp`` (OTLP over
HTTP/protobuf to ``OTEL_EXPORTER_OTLP_ENDPOINT``, e.g. a collector or Jaeger, batched) or
``console``; ``TRACING_SAMPLE_RATIO`` (0..1) of new traces recorded; a trace started by a
caller keeps the caller's decision.

One tracer provider per process (:func:`provider_for`), built from the first container's
config; :func:`use_provider` injects another one (tests: an in-memory exporter).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from contextvars import Token
from typing import TYPE_CHECKING, Any

from nameko.events import EventDispatcher
from nameko.extensions import DependencyProvider
from opentelemetry import context, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.errors import ExcInfo, ShopError, outcome_of
from common.metrics import entrypoint_kind  # one classification for metrics and traces
from common.settings import TRACING_EXPORTERS, settings_of

if TYPE_CHECKING:
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from sqlalchemy import Engine

EXPORTERS = TRACING_EXPORTERS
TRACE_HEADERS = ("traceparent", "tracestate")  # the context data keys of W3C Trace Context

propagator = TraceContextTextMapPropagator()


class ContextDataGetter(Getter[Mapping[str, Any]]):
    """Reads W3C headers from nameko's context data (a plain dict), without the default
    getter's per-call type checks."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


context_data_getter = ContextDataGetter()
_provider: TracerProvider | None = None  # this process's TracerProvider


def build_provider(config: Mapping[str, Any], service_name: str) -> TracerProvider:
    """A TracerProvider as config.yml says (module docstring)."""
    settings = settings_of(config)  # an exporter it does not know raises ValueError
    exporter = settings.tracing_exporter
    resource = Resource.create({"service.name": service_name, "service.namespace": "shop"})
    if exporter == "none":
        return TracerProvider(sampler=ALWAYS_OFF, resource=resource)
    ratio = settings.tracing_sample_ratio
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)), resource=resource)
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    return provider


def provider_for(config: Mapping[str, Any], service_name: str) -> TracerProvider:
    """This process's provider: the injected one, else built once from ``config``."""
    global _provider
    if _provider is None:
        _provider = build_provider(config, service_name)
    return _provider


@contextlib.contextmanager
def use_provider(provider: TracerProvider) -> Iterator[TracerProvider]:
    """Make ``provider`` this process's provider for the block (containers set up inside
    it use it)."""
    global _provider
    previous, _provider = _provider, provider
    try:
        yield provider
    finally:
        _provider = previous


def records_spans(provider: object) -> bool:
    """True when spans of ``provider`` may be recorded (an exporter is configured)."""
    return getattr(provider, "sampler", None) is not ALWAYS_OFF


def trace_fields() -> dict[str, str]:
    """``{"trace_id", "span_id"}`` of the current span, hex as in ``traceparent`` (empty
    when there is none)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


def mark_outcome(span: trace.Span, exc: BaseException | None) -> None:
    """Record how a call ended on ``span``: ``shop.outcome``, and an error status for a
    crash or a 5xx (a 4xx is the caller's mistake, not this span's failure)."""
    span.set_attribute("shop.outcome", outcome_of(exc))
    if exc is not None and (not isinstance(exc, ShopError) or exc.status >= 500):
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))


SPAN_KINDS = {
    "rpc": SpanKind.SERVER,
    "http": SpanKind.SERVER,
    "event": SpanKind.CONSUMER,
    "timer": SpanKind.INTERNAL,
}


class Tracing(DependencyProvider):
    """One span per worker, current for the worker's whole run (module docstring)."""

    def setup(self) -> None:
        service = self.container.service_name
        self.provider = provider_for(self.container.config, service)
        self.tracer = self.provider.get_tracer(service)
        self.active: dict[
            Any, tuple[trace.Span, Token[context.Context]]
        ] = {}  # worker_ctx -> (span, token)

    def worker_setup(self, worker_ctx: Any) -> None:
        kind = entrypoint_kind(worker_ctx.entrypoint)
        parent = (
            None
            if kind == "timer"
            else propagator.extract(worker_ctx.context_data, getter=context_data_getter)
        )
        span = self.tracer.start_span(
            f"{worker_ctx.service_name}.{worker_ctx.entrypoint.method_name}",
            context=parent,
            kind=SPAN_KINDS.get(kind, SpanKind.INTERNAL),
            attributes={
                "rpc.system": "nameko",
                "rpc.service": worker_ctx.service_name,
                "rpc.method": worker_ctx.entrypoint.method_name,
                "shop.entrypoint": kind,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        self.active[worker_ctx] = (span, token)

    def worker_result(
        self, worker_ctx: Any, result: Any = None, exc_info: ExcInfo | None = None
    ) -> None:
        active = self.active.get(worker_ctx)
        if active is not None:
            mark_outcome(active[0], exc_info[1] if exc_info else None)

    def worker_teardown(self, worker_ctx: Any) -> None:
        active = self.active.pop(worker_ctx, None)
        if active is not None:
            span, token = active
            span.end()
            context.detach(token)

    def get_dependency(self, worker_ctx: Any) -> None:
        return None


def trace_statements(engine: Engine, provider: TracerProvider, service_name: str) -> EngineTracer:
    """Each statement run on ``engine`` becomes a child span of the current one
    (opentelemetry-instrumentation-sqlalchemy's engine tracer, bound to this engine only:
    its instrumentor would also patch ``sqlalchemy.create_engine`` process-wide and
    instruments only once per process)."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpMeterProvider

    usage = (
        NoOpMeterProvider()
        .get_meter(__name__)
        .create_up_down_counter("db.client.connections.usage")
    )  # pool usage is a Prometheus metric here already
    return EngineTracer(provider.get_tracer(service_name), engine, usage)


@functools.lru_cache(maxsize=64)
def tracer_of(provider: TracerProvider, name: str) -> trace.Tracer:
    """``provider.get_tracer(name)``, made once (the SDK builds a new tracer per call)."""
    return provider.get_tracer(name)


@contextlib.contextmanager
def client_span(
    provider: TracerProvider, caller: str, target: str, method: str
) -> Iterator[tuple[trace.Span, dict[str, str]]]:
    """A ``CLIENT`` span for one RPC to ``target.method``, child of the current span;
    yields ``(span, headers)`` where ``headers`` are the context data entries that make the
    callee's span a child of this one."""
    tracer = tracer_of(provider, caller)
    with tracer.start_as_current_span(
        f"{target}.{method}",
        kind=SpanKind.CLIENT,
        record_exception=False,
        set_status_on_exception=False,
        attributes={"rpc.system": "nameko", "rpc.service": target, "rpc.method": method},
    ) as span:
        headers: dict[str, str] = {}
        propagator.inject(headers)
        yield span, headers


def current_headers() -> dict[str, str]:
    """The W3C Trace Context entries of the current span (for a message sent outside an
    RPC, e.g. an event)."""
    headers: dict[str, str] = {}
    propagator.inject(headers)
    return headers


class TracedEventDispatcher(EventDispatcher):
    """nameko's ``EventDispatcher`` whose events carry the dispatching worker's span as
    their parent (nameko computes the headers before the worker's span exists)."""

    def get_dependency(self, worker_ctx: Any) -> Callable[[str, Any], None]:
        def dispatch(event_type: str, event_data: Any) -> None:
            headers = self.get_message_headers(worker_ctx)
            headers.update(
                (self._get_header_name(key), value) for key, value in current_headers().items()
            )
            self.publisher.publish(
                event_data, exchange=self.exchange, routing_key=event_type, extra_headers=headers
            )

        return dispatch
