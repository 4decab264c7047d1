"""Property-based fuzzing of the live gateway against the OpenAPI document it serves.

schemathesis (v4 API) takes the document (gateway/openapi.yaml as gateway/openapi.py serves
it with auth off; a fixture checks that the gateway serves exactly that at ``/api/openapi.json``) and, for
every operation (one test each, ``test_fuzz_<operationId>``), sends the spec's examples, its
coverage cases (boundaries, each constraint broken in turn, other methods) and up to
``FUZZ_MAX_EXAMPLES`` (100) generated requests, valid and invalid: about 1,500 cases in
about 25 s. Every answer must be:

* not a server error (``not_a_server_error``: no 5xx, so no stack trace);
* a status code the spec lists for that operation, with a declared content type, a body
  that matches the response schema, and the required headers (``Location`` on a 201).

``FUZZ_STRICT=1`` also requires that every schema-valid request is accepted and every
schema-invalid one rejected (``positive_data_acceptance``, ``negative_data_rejection``):
the spec's constraints against the services' validation.

The same operations are fuzzed again on a gateway with ``AUTH_MODE=jwt`` (the document it
serves, where protected operations need the bearer), with an admin's token and with
customer 1's: the statuses that authorization adds (401, 403, 404) must be the spec's.

The databases are seeded first (a customer, a product, a confirmed and a cancelled order)
so that small ids hit real rows and their 200 answers are checked too.

Generation is derandomized (the same cases on every run, so CI is stable); set
``FUZZ_RANDOM=1`` to explore new ones. The run prints how many cases each operation got
and the statuses they were answered with.

``REGRESSIONS`` pins each server bug that the fuzzing, or probing around what it found,
turned up: the exact request and what a fixed service may answer.
"""

import collections
import os
import time
import uuid

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway import authz, openapi
from tests.harness import Stack

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
MIN_CASES = 1000  # with the default budget, the whole run must send at least this many
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
STRICT = os.environ.get("FUZZ_STRICT") == "1"
if STRICT:
    CHECKS += [negative_data_rejection, positive_data_acceptance]
SEED = {
    "customer": {"name": "john doe", "email": "john.doe@gmail.com"},
    "product": {"name": "ruler", "price": "3.5", "stock": 1_000_000},
    "order": {"customer_id": 1, "products": [{"id": 1, "quantity": 1}]},
}

cases_sent = collections.Counter()
statuses = collections.defaultdict(collections.Counter)  # of the answers that passed


@pytest.fixture(scope="module")
def http_session():
    with requests.Session() as session:
        yield session


@pytest.fixture
def seeded_api(api, http_session):
    """The gateway in front of a customer 1, a product 1, a confirmed order 1 and a
    cancelled order 2."""
    for path, body in (
        ("customers", SEED["customer"]),
        ("products", SEED["product"]),
        ("orders", SEED["order"]),
        ("orders", SEED["order"]),
    ):
        response = http_session.post(f"{api}/api/{path}", json=body, timeout=30)
        assert response.status_code == 201, response.text
    assert http_session.post(f"{api}/api/orders/2/cancel", timeout=30).status_code == 200
    return api


@pytest.fixture
def served_api(seeded_api, http_session):
    """The seeded gateway, once it is known to serve the very document fuzzed here."""
    served = http_session.get(f"{seeded_api}/api/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == openapi.served_spec("off")
    return seeded_api


# Loaded at import, not with schemathesis.pytest.from_fixture(): with pytest 9.2 the lazy
# loader of schemathesis 4.32.5 fails (it sets Function._nodeid, which pytest 9.2 dropped).
schema = schemathesis.openapi.from_dict(openapi.served_spec("off"))
schema.config.update(request_timeout=30)
OPERATION_IDS = [
    operation["operationId"]
    for item in openapi.spec()["paths"].values()
    for operation in item.values()
    if isinstance(operation, dict) and "operationId" in operation
]


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(request):
    """Counts the cases sent and how long they took; the budget must reach MIN_CASES."""
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    total = sum(cases_sent.values())
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and total:
        per_operation = "\n".join(
            f"  {label}: {n} ({', '.join(f'{code} x{k}' for code, k in sorted(statuses[label].items()))})"
            for label, n in sorted(cases_sent.items())
        )
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nfuzz: {total} cases over {len(cases_sent)} operations in {elapsed:.1f} s:\n"
                f"{per_operation}"
            )
    off_mode = sum(n for label, n in cases_sent.items() if ": " not in label)
    if MAX_EXAMPLES >= 100 and len(cases_sent) == len(OPERATION_IDS) * (1 + len(JWT_CALLERS)):
        assert off_mode >= MIN_CASES, f"only {off_mode} cases were sent with auth off"


def fuzz_test(
    operation_id, fuzzed_schema=schema, target="served_api", caller=None, max_examples=MAX_EXAMPLES
):
    """``test_fuzz_<operationId>``: one pytest test per operation. (One test for the whole
    schema, ``@schema.parametrize()`` on a single function, gives every operation the same
    node id under pytest 9.2, which breaks selection and reporting.) ``target`` is the
    fixture giving the base URL; ``caller`` a key of JWT_CALLERS whose bearer token every
    request carries (the jwt-mode runs)."""
    label_prefix = f"{caller}: " if caller else ""

    def test(case, request, http_session):
        base_url = request.getfixturevalue(target)
        label = label_prefix + case.operation.label
        cases_sent[label] += 1
        if STRICT and (case.headers or {}).get("Idempotency-Key"):
            # a key generated twice for different bodies is a legitimate 422, not a spec miss
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
        if caller:
            case.headers = {
                **(case.headers or {}),
                "Authorization": f"Bearer {JWT_CALLERS[caller]()}",
            }
        response = case.call_and_validate(base_url=base_url, session=http_session, checks=CHECKS)
        statuses[label][response.status_code] += 1

    name = f"test_fuzz_{operation_id}" + (f"_as_{caller}" if caller else "")
    test.__name__ = test.__qualname__ = name
    test = settings(
        max_examples=max_examples,
        deadline=None,
        database=None,  # nothing written to .hypothesis/
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
    )(test)
    return name, fuzzed_schema.include(operation_id=operation_id).parametrize()(test)


for _operation_id in OPERATION_IDS:
    _name, globals()[f"test_fuzz_{_operation_id}"] = fuzz_test(_operation_id)


# AUTH_MODE=jwt: one more gateway process, on the e2e stack's broker and databases, that
# enforces bearer JWTs; the document it serves (every protected operation needs the
# bearer) is fuzzed with each caller's token: the admin (the run) and customer 1
# (the seeded customer: its own records answer 200, anyone else's 404, the admin's routes
# 403). Its budget is smaller: the routes' validation was fuzzed above; this run is about
# the answers auth adds (401, 403, 404) staying in the contract and never a 5xx.
JWT_SECRET = "fuzz-" + "0123456789abcdef" * 3
JWT_CONFIG = {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": JWT_SECRET}
JWT_MAX_EXAMPLES = max(MAX_EXAMPLES // 4, 1)
JWT_CALLERS = {
    "admin": lambda: authz.mint(JWT_CONFIG, admin=True),
    "customer": lambda: authz.mint(JWT_CONFIG, customer_id=1),
}
jwt_schema = schemathesis.openapi.from_dict(openapi.served_spec("jwt"))
jwt_schema.config.update(request_timeout=30)


@pytest.fixture(scope="module")
def jwt_gateway(stack, tmp_path_factory):
    """A gateway with AUTH_MODE=jwt in front of the e2e stack's services."""
    env = {**stack.env, **JWT_CONFIG}
    with Stack(env, str(tmp_path_factory.mktemp("jwt-gateway")), {}, gateways=1) as gateway:
        yield gateway.urls[0]


@pytest.fixture
def served_jwt_api(seeded_api, jwt_gateway, http_session):
    """The jwt gateway, in front of the seeded databases, once it is known to serve the
    jwt-mode document fuzzed here."""
    served = http_session.get(f"{jwt_gateway}/api/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == openapi.served_spec("jwt")
    return jwt_gateway


for _caller in JWT_CALLERS:
    for _operation_id in OPERATION_IDS:
        _name, _test = fuzz_test(
            _operation_id, jwt_schema, "served_jwt_api", _caller, JWT_MAX_EXAMPLES
        )
        globals()[_name] = _test


# Server bugs found by the fuzzing above and by probing around what it found: each is the
# exact request, on the seeded stack, the statuses a fixed service may answer (never a 5xx,
# always the error envelope) and what it must have left behind.
JSON = {"Content-Type": "application/json"}
REGRESSIONS = []


def regression(check):
    REGRESSIONS.append(pytest.param(check, id=check.__name__.replace("_", "-")))
    return check


class Api:
    """The seeded gateway for the regressions."""

    def __init__(self, session, base):
        self.session, self.base = session, base

    def answer(self, method, path, accepted, **kwargs):
        """The response to one request, once checked: a status in ``accepted``, JSON, and
        the error envelope on a 4xx."""
        response = self.session.request(method, f"{self.base}{path}", timeout=30, **kwargs)
        assert response.status_code in accepted, response.text
        assert response.headers["Content-Type"] == "application/json"
        if response.status_code >= 400:
            assert set(response.json()) == {"error", "message", "details"}
        return response

    def get(self, path):
        return self.answer("GET", path, {200}).json()

    def create(self, path, body):
        return self.answer("POST", path, {201}, json=body).json()


@regression
def name_with_NUL_500(api):
    api.answer(
        "POST", "/api/customers", {422}, json={"name": "a\u0000b", "email": "nul@example.com"}
    )
    api.answer(
        "POST", "/api/products", {422}, json={"price": 583.01, "stock": 24, "name": "ab\u0000"}
    )


@regression
def lone_surrogate_500(api):
    for path, body in (
        ("/api/customers", '{"name": "a\\ud800", "email": "surrogate@example.com"}'),
        ("/api/customers", '{"name": "x", "email": "a@\\ud800.com"}'),
        ("/api/products", '{"name": "\\ud800", "price": "1", "stock": 1}'),
    ):
        api.answer("POST", path, {400, 422}, data=body, headers=JSON)


@regression
def email_longer_than_254_once_lowercased_500(api):
    email = "\u0130" * 200 + "@ex.com"  # 207 characters, 407 once lower-cased
    response = api.answer("POST", "/api/customers", {422}, json={"name": "dotted", "email": email})
    assert response.json()["details"].keys() == {"email"}


@regression
def deeply_nested_json_body_500(api):
    body = "[" * 30000 + "]" * 30000  # 60 KB, under the 64 KiB limit
    api.answer("POST", "/api/products", {400}, data=body, headers=JSON)


@regression
def order_total_over_numeric_14_2_500(api):
    product = api.create(
        "/api/products", {"name": "globe", "price": "9999999999.99", "stock": 1000}
    )
    order = {"customer_id": 1, "products": [{"id": product["id"], "quantity": 101}]}
    response = api.answer("POST", "/api/orders", {422}, json=order)
    assert response.json()["error"] == "order_total_too_large"
    assert api.get(f"/api/products/{product['id']}")["stock"] == 1000


@regression
def price_minus_zero_answered_as_minus_0_00(api):
    created = api.create("/api/products", {"name": "free", "price": "-0", "stock": 1})
    assert created["price"] == api.get(f"/api/products/{created['id']}")["price"] == "0.00"


@regression
def double_slash_400_with_redirect_url(api):
    response = api.answer("GET", "/api/products//1", {404})
    assert response.json()["message"] == "no route for /api/products//1"


@regression
def merged_lines_over_int4_stored_a_rejected_order(api):
    key = {"Idempotency-Key": "regression-merged-lines"}
    lines = [{"id": 1, "quantity": 2**31 - 1}, {"id": 1, "quantity": 1}]
    response = api.answer(
        "POST", "/api/orders", {422}, headers=key, json={"customer_id": 1, "products": lines}
    )
    assert response.json()["details"].keys() == {"products"}  # the client's field name
    # Nothing was stored under the key: it is still free for a valid order.
    api.answer("POST", "/api/orders", {201}, headers=key, json=SEED["order"])


@pytest.mark.parametrize("check", REGRESSIONS)
def test_fuzz_regression(seeded_api, http_session, check):
    check(Api(http_session, seeded_api))
