"""The OpenAPI document (gateway/openapi.yaml, served at /api/openapi.json) and the docs
page (/api/docs) against the code and the live gateway.

* the spec names every ``@http`` route of GatewayService (found by introspecting the
  class's Nameko entrypoints), with the same path parameters, and nothing else;
* every example of a request in the spec (bodies, headers, path parameters) is accepted
  by the live gateway, posted in dependency order on empty databases;
* the docs page and each asset it loads answer 200 with the right content type, from the
  gateway itself (no CDN), and nothing outside the Swagger UI distribution is served.
"""

import http.client
import inspect
import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse

import pytest
import requests
import yaml
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from nameko.web.handlers import HttpRequestHandler

from common.errors import BY_CODE, ShopError
from gateway import authz, openapi
from gateway import exceptions as gateway_exceptions
from gateway.service import GatewayService

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
WERKZEUG_PARAM = re.compile(
    r"<(?:(?P<converter>[a-z_]+)(?:\([^)]*\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)
# werkzeug converter -> the JSON Schema type of the matching OpenAPI path parameter
CONVERTER_TYPES = {
    None: "string",
    "default": "string",
    "string": "string",
    "path": "string",
    "int": "integer",
    "float": "number",
    "uuid": "string",
}
# POSTs whose example bodies depend on each other, in the order they must be sent.
CREATE_ORDER = ["/api/customers", "/api/products", "/api/orders"]


def http_routes():
    """``{(METHOD, openapi_path): (method_name, {param: converter})}`` of every ``@http``
    entrypoint declared on GatewayService."""
    routes = {}
    for name, member in inspect.getmembers(GatewayService, inspect.isfunction):
        for entrypoint in getattr(member, ENTRYPOINT_EXTENSIONS_ATTR, ()):
            if not isinstance(entrypoint, HttpRequestHandler):
                continue
            params = {m["name"]: m["converter"] for m in WERKZEUG_PARAM.finditer(entrypoint.url)}
            path = WERKZEUG_PARAM.sub(lambda m: "{" + m["name"] + "}", entrypoint.url)
            for method in entrypoint.method.split(","):
                routes[(method.strip().upper(), path)] = (name, params)
    return routes


def spec_operations(spec):
    return {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def resolve(spec, node):
    while isinstance(node, dict) and "$ref" in node:
        target = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def parameters(spec, path, operation):
    item = spec["paths"][path]
    return [resolve(spec, p) for p in item.get("parameters", []) + operation.get("parameters", [])]


def example_of(spec, holder):
    """The example of a parameter or media type (``example``, first of ``examples``, or the
    schema's ``example``), else None."""
    if "example" in holder:
        return holder["example"]
    if holder.get("examples"):
        return resolve(spec, next(iter(holder["examples"].values())))["value"]
    schema = resolve(spec, holder.get("schema", {}))
    return schema.get("example")


@pytest.fixture(scope="module")
def spec():
    return openapi.spec()


def test_introspection_finds_the_gateway_routes():
    routes = http_routes()
    assert ("GET", "/health") in routes
    assert routes[("GET", "/api/orders/{order_id}")] == ("get_order", {"order_id": "int"})
    assert len(routes) >= 16


def test_every_http_route_is_in_the_spec_and_nothing_else(spec):
    routes, operations = http_routes(), spec_operations(spec)
    assert sorted(set(routes) - set(operations)) == [], "routes missing from gateway/openapi.yaml"
    assert sorted(set(operations) - set(routes)) == [], "operations in the spec with no route"


def test_path_parameters_match_the_routes(spec):
    for (method, path), (_name, params) in http_routes().items():
        operation = spec_operations(spec)[(method, path)]
        declared = {p["name"]: p for p in parameters(spec, path, operation) if p["in"] == "path"}
        assert set(declared) == set(params), (method, path)
        for param, converter in params.items():
            assert declared[param]["required"] is True
            schema = resolve(spec, declared[param]["schema"])
            assert schema["type"] == CONVERTER_TYPES[converter], (method, path, param)


def test_operation_ids_are_the_gateway_methods(spec):
    for key, (name, _) in http_routes().items():
        assert spec_operations(spec)[key].get("operationId") == name, key


def test_every_post_documents_idempotency_and_errors(spec):
    for (method, path), operation in spec_operations(spec).items():
        responses = operation["responses"]
        if method == "POST":
            if "requestBody" in operation:
                names = {p["name"] for p in parameters(spec, path, operation)}
                assert "Idempotency-Key" in names, path
                assert "201" in responses, path
                assert resolve(spec, responses["201"])["headers"]["Location"], path
                for status in ("400", "413", "415", "422"):
                    assert status in responses, (path, status)
            for status in ("401", "403", "503", "504"):
                assert status in responses, (path, status)
        for status, response in responses.items():
            if status.startswith(("4", "5")) and path != "/ready":
                schema = resolve(
                    spec, resolve(spec, response)["content"]["application/json"]["schema"]
                )
                assert schema == resolve(spec, {"$ref": "#/components/schemas/Error"}), (
                    path,
                    status,
                )


def test_served_spec_is_the_file_with_the_modes_security(stack, api):
    """The e2e stack runs with auth off: the file, every operation open."""
    response = requests.get(f"{api}/api/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    with open(openapi.SPEC_PATH, encoding="utf-8") as stream:
        written = yaml.safe_load(stream)
    for operation in spec_operations(written).values():
        operation["security"] = []
    assert response.json() == written
    assert response.json()["openapi"].startswith("3.")


# What each rule of gateway/authz.py must declare: its security in jwt mode, and the
# statuses it can answer besides the route's own (401: no or a bad token; 403: a role
# that may not call it; 404: another customer's resource, answered as a missing one).
RULE_CONTRACTS = {
    "public": ([], set()),
    "signup": ([{}, {"bearer": []}], {"401", "403"}),
    "admin": ([{"bearer": []}], {"401", "403"}),
    "own_customer": ([{"bearer": []}], {"401", "404"}),
    "place_order": ([{"bearer": []}], {"401", "403"}),
    "own_order": ([{"bearer": []}], {"401", "403", "404"}),
    "cancel_order": ([{"bearer": []}], {"401", "403", "404"}),
}


def test_every_operation_declares_the_rule_the_gateway_enforces(spec):
    operations = {op["operationId"]: op for op in spec_operations(spec).values()}
    assert set(operations) == set(authz.RULES), "gateway/authz.py RULES and the spec differ"
    for name, operation in operations.items():
        rule = operation["x-auth-rule"]
        assert rule == authz.RULES[name], name
        security, statuses = RULE_CONTRACTS[rule]
        assert operation["security"] == security, name
        assert statuses <= set(operation["responses"]), (name, statuses)


# Operations that need the bearer under AUTH_MODE=jwt: every one but the public ones and
# the sign-up (which needs it too with AUTH_SIGNUP=admin).
JWT_SECURED = {
    "list_customers",
    "get_customer",
    "list_customer_orders",
    "create_product",
    "create_order",
    "get_order",
    "cancel_order",
}


@pytest.mark.parametrize(
    "mode, signup_is_admins, secured",
    [
        ("off", False, set()),
        ("tokens", False, {"create_customer", "create_product", "create_order", "cancel_order"}),
        ("jwt", False, JWT_SECURED),
        ("jwt", True, JWT_SECURED | {"create_customer"}),
    ],
)
def test_the_served_spec_says_what_the_mode_requires(mode, signup_is_admins, secured):
    """Operations whose only security requirement is the bearer token, per mode."""
    served = openapi.served_spec(mode, signup_is_admins)
    required = {
        op["operationId"]
        for op in spec_operations(served).values()
        if op["security"] == [{"bearer": []}]
    }
    assert required == secured


def test_every_request_example_is_accepted(spec, stack, api):
    """Bodies first, in dependency order (a customer and a product before an order), each
    with the spec's Idempotency-Key example where the POST takes one; then every GET with
    its path parameters' examples; the cancel (a state change) last."""
    operations = spec_operations(spec)
    with_body = {path for (method, path), op in operations.items() if "requestBody" in op}
    assert with_body == set(CREATE_ORDER), (
        "a new POST with a body: give it its place in CREATE_ORDER"
    )
    session = requests.Session()
    created = {}
    for path in CREATE_ORDER:
        operation = operations[("POST", path)]
        media = operation["requestBody"]["content"]["application/json"]
        body = example_of(spec, media)
        assert body is not None, f"POST {path} has no request example"
        headers = {}
        for param in parameters(spec, path, operation):
            if param["in"] == "header" and example_of(spec, param) is not None:
                headers[param["name"]] = f"{example_of(spec, param)}{path}"  # one key per route
        response = session.post(f"{api}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 201, (path, body, response.text)
        assert response.headers["Location"] == f"{path}/{response.json()['id']}"
        created[path] = response.json()
        replay = session.post(f"{api}{path}", json=body, headers=headers, timeout=30)
        if headers:  # the same key: the same outcome, not a second resource
            assert (replay.status_code, replay.json()) == (201, response.json())
    assert created["/api/orders"]["status"] == "confirmed"
    assert created["/api/products"]["price"] == "3.50"

    def url(path, operation):
        for param in parameters(spec, path, operation):
            if param["in"] == "path":
                value = example_of(spec, param)
                assert value is not None, f"{path}: no example for {param['name']}"
                path = path.replace("{" + param["name"] + "}", str(value))
        return f"{api}{path}"

    gets = [(path, op) for (method, path), op in operations.items() if method == "GET"]
    for path, operation in gets:
        response = session.get(url(path, operation), timeout=30)
        assert 200 <= response.status_code < 300, (path, response.status_code, response.text[:500])
    cancels = [
        (path, op)
        for (method, path), op in operations.items()
        if method == "POST" and "requestBody" not in op
    ]
    assert cancels
    for path, operation in cancels:
        response = session.post(url(path, operation), timeout=30)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["status"] == "cancelled"


class AssetLinks(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.links.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.links.append(attrs["href"])


EXPECTED_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


def test_docs_page_and_its_assets_load_from_the_gateway(stack, api):
    page = requests.get(f"{api}/api/docs", timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'id="swagger-ui"' in page.text
    parser = AssetLinks()
    parser.feed(page.text)
    urls = [urljoin(page.url, link) for link in parser.links]
    assert urls, "the docs page loads nothing"
    spec_url = urljoin(page.url, re.search(r'url: "([^"]+)"', page.text)[1])
    assert spec_url == f"{api}/api/openapi.json"
    for url in urls + [spec_url]:
        assert urlparse(url).netloc == urlparse(api).netloc, f"{url} is not served by the gateway"
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, url
        extension = "." + url.rsplit(".", 1)[1]
        assert response.headers["Content-Type"].split(";")[0] == EXPECTED_TYPES[extension], url
        assert response.content
    kinds = {url.rsplit(".", 1)[1] for url in urls}
    assert {"js", "css"} <= kinds
    bundle = requests.get(f"{api}/api/docs/swagger-ui-bundle.js", timeout=10)
    assert "SwaggerUIBundle" in bundle.text
    assert bundle.headers["Content-Type"] == "text/javascript; charset=utf-8"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/api/docs/../openapi.json",
        "/api/docs/../../gateway/openapi.py",
        "/api/docs/%2e%2e/%2e%2e/gateway/openapi.yaml",
        "/api/docs/..%2F..%2Fservice.py",
        "/api/docs//etc/passwd",
        "/api/docs/vendor/../swagger-ui.css",
        "/api/docs/index.j2",
        "/api/docs/swagger-initializer.js",
        "/api/docs/nothing.js",
        "/api/docs/swagger-ui.css%00.png",
    ],
)
def test_docs_assets_serve_nothing_else(stack, api, raw_path):
    """The raw path goes on the wire as written (no client-side dot-segment removal)."""
    host, port = urlparse(api).hostname, urlparse(api).port
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", raw_path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 404, (raw_path, body[:200])
    assert response.getheader("Content-Type") == "application/json"
    assert set(yaml.safe_load(body)) == {"error", "message", "details"}


def test_every_error_code_is_documented_with_its_status(spec):
    """The spec's error table lists every code of the contract (common/errors.py) and of
    the gateway's own HTTP errors, each with its status."""
    classes = {cls.error: cls for cls in BY_CODE.values()}
    for _, cls in inspect.getmembers(gateway_exceptions, inspect.isclass):
        if issubclass(cls, ShopError):
            classes.setdefault(cls.error, cls)
    documented = dict(
        (match["code"], int(match["status"]))
        for match in re.finditer(
            r"\| (?P<status>\d{3}) \| `(?P<code>[a-z_]+)` \|", spec["info"]["description"]
        )
    )
    assert documented == {code: cls.status for code, cls in classes.items()}
