"""OpenTelemetry traces (common/tracing.py) across real containers of the gateway and the
three services over real RabbitMQ and PostgreSQL, recorded by an in-memory exporter.

One HTTP order is one trace: gateway -> orders -> products with every parent link
intact, the SQL of each transaction as child spans, and every worker's log line carrying
the trace's ids."""

import io
import json
import logging

import eventlet
import pytest
import requests
from nameko.testing.services import entrypoint_hook
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from common.errors import GatewayTimeout
from common.logs import JsonFormatter
from common.tracing import Tracing, build_provider, propagator, records_spans, use_provider
from customers.service import CustomersService
from gateway.service import GatewayService
from orders.service import OrdersService
from products.service import ProductsService
from tests.harness import free_port
from tests.test_bounded_rpc import CallerService, SlowService

JSON = {"Content-Type": "application/json"}
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans():
    """Every span finished while the test runs, in memory (the containers started by the
    test use this provider: it is injected before they are set up)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with use_provider(provider):
        yield exporter
    provider.shutdown()


@pytest.fixture
def worker_lines():
    """The JSON lines ``shop.worker`` writes while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("shop.worker")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not .level: it clears the loggers' caches
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


@pytest.fixture
def shop(spans, runner_factory, service_config):
    """The whole shop in this process; returns the gateway's base URL."""
    address = f"127.0.0.1:{free_port()}"
    config = {
        **service_config,
        "WEB_SERVER_ADDRESS": address,
        "RECOVERY_INTERVAL": 0,
        "HOLD_CHECK_INTERVAL": 0,
    }  # no timer traces in the way
    runner_factory(config, GatewayService, CustomersService, ProductsService, OrdersService).start()
    return f"http://{address}"


def finished_spans(exporter, *wanted):
    """The finished spans once every ``(name, kind, service)`` in ``wanted`` has ended: a
    worker's span ends after its reply is sent, so a moment after its caller has the
    answer."""
    for _ in range(200):
        finished = exporter.get_finished_spans()
        ended = {(span.name, span.kind, span.instrumentation_scope.name) for span in finished}
        if set(wanted) <= ended:
            return finished
        eventlet.sleep(0.025)
    raise AssertionError(f"spans {wanted} never ended: {[span.name for span in finished]}")


def server(name):
    """``(name, SERVER, service)`` of the worker span ``<service>.<method>``."""
    return name, SpanKind.SERVER, name.split(".", 1)[0]


def hex_id(value, digits):
    return format(value, f"0{digits}x")


def by_id(finished):
    return {span.context.span_id: span for span in finished}


def parent_of(span, index):
    return index.get(span.parent.span_id) if span.parent else None


def one(finished, name, kind, scope):
    """The only span called ``name`` of ``kind`` recorded by service ``scope``."""
    matches = [
        span
        for span in finished
        if span.name == name and span.kind == kind and span.instrumentation_scope.name == scope
    ]
    assert len(matches) == 1, [(s.name, s.kind, s.instrumentation_scope.name) for s in finished]
    return matches[0]


def descends_from(span, ancestor, index):
    while span is not None:
        if span is ancestor:
            return True
        span = parent_of(span, index)
    return False


def test_one_order_over_http_is_one_trace_across_the_services(shop, spans, worker_lines):
    customer = requests.post(
        f"{shop}/api/customers", json={"name": "t", "email": "t@x.io"}, timeout=10
    ).json()
    product = requests.post(
        f"{shop}/api/products", json={"name": "p", "price": "2", "stock": 5}, timeout=10
    ).json()
    finished_spans(
        spans,
        server("gateway.create_product"),
        server("products.create_product"),
        ("orders.remember_customer", SpanKind.CONSUMER, "orders"),
    )  # the event
    spans.clear()

    answer = requests.post(
        f"{shop}/api/orders",
        timeout=30,
        json={"customer_id": customer["id"], "products": [{"id": product["id"], "quantity": 2}]},
        headers={**JSON, "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"},
    )
    assert answer.status_code == 201, answer.text

    finished = finished_spans(
        spans,
        server("gateway.create_order"),
        server("orders.create_order"),
        server("products.reserve_stock"),
    )
    index = by_id(finished)
    gateway = one(finished, "gateway.create_order", SpanKind.SERVER, "gateway")
    to_orders = one(finished, "orders.create_order", SpanKind.CLIENT, "gateway")
    orders = one(finished, "orders.create_order", SpanKind.SERVER, "orders")
    to_products = one(finished, "products.reserve_stock", SpanKind.CLIENT, "orders")
    products = one(finished, "products.reserve_stock", SpanKind.SERVER, "products")

    # one trace: the client's, continued; nothing else was traced meanwhile
    assert {hex_id(span.context.trace_id, 32) for span in finished} == {CLIENT_TRACE_ID}
    assert hex_id(gateway.parent.span_id, 16) == CLIENT_SPAN_ID and gateway.parent.is_remote
    # parent-child links, hop by hop
    assert parent_of(to_orders, index) is gateway
    assert parent_of(orders, index) is to_orders and orders.parent.is_remote
    assert parent_of(to_products, index) is orders
    assert parent_of(products, index) is to_products and products.parent.is_remote
    # the SQL of each transaction, under the worker that ran it
    for service, worker in (("orders", orders), ("products", products)):
        statements = [
            span
            for span in finished
            if span.kind == SpanKind.CLIENT
            and span.instrumentation_scope.name == service
            and span.attributes.get("db.system") == "postgresql"
        ]
        assert statements, f"no SQL span from {service}"
        assert all(descends_from(span, worker, index) for span in statements)
    assert any(  # the stock decision and its writes: one statement (products/stock.py)
        "shop_reserve_stock(" in span.attributes.get("db.statement", "")
        for span in finished
        if span.instrumentation_scope.name == "products"
    )
    for span in (gateway, orders, products, to_orders, to_products):
        assert span.status.status_code != StatusCode.ERROR
        assert span.attributes["shop.outcome"] == "ok"

    # every worker line of the order carries the trace id and its own span id
    lines = {(line["service"], line["method"]): line for line in worker_lines()}
    for span in (gateway, orders, products):
        line = lines[(span.instrumentation_scope.name, span.name.split(".", 1)[1])]
        assert line["trace_id"] == CLIENT_TRACE_ID
        assert line["span_id"] == hex_id(span.context.span_id, 16)
        assert line["request_id"] == answer.headers["X-Request-ID"]


def test_a_trace_starts_at_the_gateway_and_follows_events(shop, spans):
    """Without a ``traceparent`` the gateway starts the trace; the ``customer_created``
    event's handler in orders is a child of the customers worker that dispatched it."""
    answer = requests.post(
        f"{shop}/api/customers", json={"name": "e", "email": "e@x.io"}, timeout=10
    )
    assert answer.status_code == 201

    finished = finished_spans(
        spans,
        server("gateway.create_customer"),
        server("customers.create_customer"),
        ("orders.remember_customer", SpanKind.CONSUMER, "orders"),
    )
    index = by_id(finished)
    gateway = one(finished, "gateway.create_customer", SpanKind.SERVER, "gateway")
    customers = one(finished, "customers.create_customer", SpanKind.SERVER, "customers")
    handler = one(finished, "orders.remember_customer", SpanKind.CONSUMER, "orders")
    assert gateway.parent is None  # a new trace
    assert descends_from(customers, gateway, index)
    assert parent_of(handler, index) is customers
    assert handler.context.trace_id == gateway.context.trace_id


class TracedCaller(CallerService):
    tracing = Tracing()


def test_a_timed_out_call_is_an_error_span(spans, container_factory, rabbit_config):
    """The CLIENT span of a call past its bound, and the worker that failed with it (a
    504), are error spans."""
    config = {**rabbit_config, "RPC_TIMEOUT": 0.5}
    container_factory(SlowService, config).start()
    caller = container_factory(TracedCaller, config)
    caller.start()

    with entrypoint_hook(caller, "call_slow") as call_slow:
        with pytest.raises(GatewayTimeout):
            call_slow(3)
    finished = finished_spans(spans, server("caller.call_slow"))
    client = one(finished, "slow.wait", SpanKind.CLIENT, "caller")
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes["shop.outcome"] == "timeout"
    worker = one(finished, "caller.call_slow", SpanKind.SERVER, "caller")
    assert worker.status.status_code == StatusCode.ERROR
    assert parent_of(client, by_id(finished)) is worker


def test_the_exporter_and_the_sampling_ratio_come_from_the_config():
    none = build_provider({"TRACING_EXPORTER": "none"}, "orders")
    span = none.get_tracer("orders").start_span("x")
    assert not span.is_recording() and span.get_span_context().is_valid  # ids for the logs
    assert not records_spans(none)

    never = build_provider({"TRACING_EXPORTER": "console", "TRACING_SAMPLE_RATIO": 0}, "orders")
    assert records_spans(never)
    tracer = never.get_tracer("orders")
    assert not tracer.start_span("new trace").is_recording()
    sampled_parent = propagator.extract(
        {"traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"}
    )
    assert tracer.start_span("continued", context=sampled_parent).is_recording()

    with pytest.raises(ValueError, match="TRACING_EXPORTER"):
        build_provider({"TRACING_EXPORTER": "jaeger-thrift"}, "orders")
