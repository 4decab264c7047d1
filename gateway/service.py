"""The HTTP gateway: every REST route of the shop, each one RPC away from its service.

Runs as one process per address in ``GATEWAY_ADDRESSES`` (8000, 8001, 8002 by default);
each process serves every route. Status codes: POST 201 with a ``Location`` header, GET
200, errors as the JSON envelope of :mod:`common.errors`. POSTs take an optional
``Idempotency-Key`` header: a retry with the same key gets the first outcome. List routes return a JSON array
and, when there is a next page, a ``Link: <...>; rel="next"`` header.
"""

import uuid
from functools import partial
from urllib.parse import urlencode

from werkzeug.wrappers import Response

from common.logs import WorkerLog
from common.metrics import Metrics, exposition
from common.registry import SERVICES
from common.rpc import BoundedRpcProxy
from common.settings import Config, SettingsCheck
from common.tracing import Tracing
from gateway import authz, openapi
from gateway.dependencies import AuthSettings, ReadinessProbes
from gateway.http import (
    http,
    json_response,
    max_body_bytes,
    read_json,
    unpooled_http,
)


class GatewayService:
    name = "gateway"

    config = Config()  # one read-only view of the container config for every worker
    settings_check = SettingsCheck()  # a malformed setting stops the start (common/settings.py)
    customers = BoundedRpcProxy("customers")
    products = BoundedRpcProxy("products")
    orders = BoundedRpcProxy("orders")
    worker_log = WorkerLog()
    metrics = Metrics()
    tracing = Tracing()
    readiness = ReadinessProbes(SERVICES)
    auth = AuthSettings()

    @unpooled_http("GET", "/health")
    def health(self, request):
        """The gateway process is up and serving HTTP. Answered without a worker (so no
        busy or stuck worker delays it) and without calling anything."""
        return json_response({"status": "ok"})

    @unpooled_http("GET", "/metrics")
    def metrics_text(self, request):
        """This gateway process's Prometheus metrics (common/metrics.py), text format.
        Answered without a worker, like ``/health``: a scrape never waits for one."""
        body, content_type = exposition()
        return Response(body, status=200, headers={"Content-Type": content_type})

    @http("GET", "/ready")
    def ready(self, request):
        """Readiness: RabbitMQ reachable and not blocking publishers, each service
        answering an RPC, each database answering. 200 ``{"status": "ready", "checks":
        {...}}``, or 503 with the same body (``"status": "not_ready"``) naming what failed.
        Each check is bounded by ``READY_TIMEOUT`` seconds and they run concurrently."""
        ready, checks = self.readiness.check()
        body = {"status": "ready" if ready else "not_ready", "checks": checks}
        return json_response(body, 200 if ready else 503)

    @http("GET", "/api/ping", calls="products")
    def ping(self, request):
        """One RPC round trip (``products.ping``): the cost floor of every route."""
        return json_response({"status": "ok", "products": self.products.ping()})

    @http("POST", "/api/customers", calls="customers")
    def create_customer(self, request):
        customer = self.customers.create_customer(self._body(request), self._key(request))
        return self._created(customer, f"/api/customers/{customer['id']}")

    @http("GET", "/api/customers", calls="customers")
    def list_customers(self, request):
        return self._page(request, self.customers.list_customers)

    @http("GET", "/api/customers/<int:customer_id>", calls="customers")
    def get_customer(self, request, customer_id):
        return json_response(self.customers.get_customer(customer_id))

    @http("POST", "/api/products", calls="products")
    def create_product(self, request):
        product = self.products.create_product(self._body(request), self._key(request))
        return self._created(product, f"/api/products/{product['id']}")

    @http("GET", "/api/products", calls="products")
    def list_products(self, request):
        return self._page(request, self.products.list_products)

    @http("GET", "/api/products/<int:product_id>", calls="products")
    def get_product(self, request, product_id):
        return json_response(self.products.get_product(product_id))

    @http("POST", "/api/orders", calls="orders")
    def create_order(self, request):
        order = self.orders.create_order(self._body(request), self._key(request))
        return self._created(order, f"/api/orders/{order['id']}")

    @http("GET", "/api/orders/<int:order_id>", calls="orders")
    def get_order(self, request, order_id):
        order = self.orders.get_order(order_id)
        authz.check_order(request, order)  # a customer's token: its own orders only (404)
        return json_response(order)

    @http("POST", "/api/orders/<int:order_id>/cancel", calls="orders")
    def cancel_order(self, request, order_id):
        if request.environ.get(authz.PRINCIPAL_KEY) is not None:
            authz.check_order(request, self.orders.get_order(order_id))
        return json_response(self.orders.cancel_order(order_id))

    @http("GET", "/api/customers/<int:customer_id>/orders", calls="orders")
    def list_customer_orders(self, request, customer_id):
        return self._page(request, partial(self.orders.list_orders, customer_id))

    def _body(self, request):
        return read_json(request, max_body_bytes(self.config))

    @staticmethod
    def _key(request):
        """The client's ``Idempotency-Key`` (validated by the service), else a fresh one.

        Every create RPC carries a key, so one HTTP request creates at most one resource
        even when RabbitMQ redelivers its message (a worker that died after committing but
        before replying). Only the client's own key also makes *its* retries safe."""
        return request.headers.get("Idempotency-Key") or f"gw-{uuid.uuid4().hex}"

    @staticmethod
    def _created(resource, location):
        return json_response(resource, 201, {"Location": location})

    @staticmethod
    def _page(request, list_rpc):
        """Call a keyset ``list_*`` RPC with ``?limit=&after=``; answer the items as an
        array, with a ``Link`` header to the next page when there is one."""
        limit = request.args.get("limit")
        page = list_rpc(limit=limit, after=request.args.get("after"))
        headers = {}
        if page["next_after"] is not None:
            query = {"after": page["next_after"], **({"limit": limit} if limit else {})}
            headers["Link"] = f'<{request.base_url}?{urlencode(query)}>; rel="next"'
        return json_response(page["items"], 200, headers)

    @http("GET", "/api/openapi.json")
    def openapi_spec(self, request):
        """The OpenAPI 3 document of every route (gateway/openapi.yaml), as JSON, with the
        security this gateway's ``AUTH_MODE`` enforces on each."""
        settings = authz.gate(self.config)
        return openapi.spec_response(settings.mode, settings.signup_is_admins)

    @http("GET", "/api/docs")
    def docs(self, request):
        """Human docs: a Swagger UI page on ``/api/openapi.json``."""
        return openapi.docs_response()

    @http("GET", "/api/docs/<path:filename>")
    def docs_asset(self, request, filename):
        """The docs page's scripts and styles, from the swagger-ui-bundle package (no CDN);
        404 for any name that is not one of its files."""
        return openapi.asset_response(filename)
