"""Property-based fuzzing of the live gateway against the OpenAPI document it serves.

schemathesis (v4 API) takes the document (gateway/openapi.yaml, as gateway/openapi.py loads
it; the fixture checks that the gateway serves exactly that at ``/api/openapi.json``) and,
for every operation (one test each, ``test_fuzz_<operationId>``), sends the spec's examples,
its coverage cases (boundaries, each constraint
broken in turn) and up to ``FUZZ_MAX_EXAMPLES`` generated requests, valid and invalid.
Every answer must be:

* not a server error (``not_a_server_error``: no 5xx, so no stack trace);
* a status code the spec lists for that operation, with a declared content type, a body
  that matches the response schema, and the required headers (``Location`` on a 201).

The databases are seeded first (a customer, a product, a confirmed and a cancelled
order) so that small ids hit real rows and their 200 answers are checked too.

Generation is derandomized (the same cases on every run, so CI is stable); set
``FUZZ_RANDOM=1`` to explore new ones, ``FUZZ_MAX_EXAMPLES`` to change the budget.

``REGRESSIONS`` pins each server bug the fuzzing (or its follow-up) found: the exact
request, and the answer it must get once fixed. They fail until the service is fixed.
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
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    status_code_conformance,
)

from gateway import openapi

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
    for path, body in (("customers", SEED["customer"]), ("products", SEED["product"]),
                       ("orders", SEED["order"]), ("orders", SEED["order"])):
        response = http_session.post(f"{api}/api/{path}", json=body, timeout=30)
        assert response.status_code == 201, response.text
    assert http_session.post(f"{api}/api/orders/2/cancel", timeout=30).status_code == 200
    return api


@pytest.fixture
def served_api(seeded_api, http_session):
    """The seeded gateway, once it is known to serve the very document fuzzed here."""
    served = http_session.get(f"{seeded_api}/api/openapi.json", timeout=30)
    assert served.status_code == 200 and served.json() == openapi.spec()
    return seeded_api


# Loaded at import, not with schemathesis.pytest.from_fixture(): with pytest 9.2 the lazy
# loader of schemathesis 4.32.5 fails (it sets Function._nodeid, which pytest 9.2 dropped).
schema = schemathesis.openapi.from_dict(openapi.spec())
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
    if MAX_EXAMPLES >= 100 and len(cases_sent) == len(OPERATION_IDS):
        assert total >= MIN_CASES, f"only {total} cases were sent"


def fuzz_test(operation_id):
    """``test_fuzz_<operationId>``: one pytest test per operation. (One test for the whole
    schema, ``@schema.parametrize()`` on a single function, gives every operation the same
    node id under pytest 9.2, which breaks selection and reporting.)"""

    def test(case, served_api, http_session):
        cases_sent[case.operation.label] += 1
        if STRICT and (case.headers or {}).get("Idempotency-Key"):
            # a key generated twice for different bodies is a legitimate 422, not a spec miss
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
        response = case.call_and_validate(base_url=served_api, session=http_session, checks=CHECKS)
        statuses[case.operation.label][response.status_code] += 1

    test.__name__ = test.__qualname__ = f"test_fuzz_{operation_id}"
    test = settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # nothing written to .hypothesis/
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
    )(test)
    return schema.include(operation_id=operation_id).parametrize()(test)


for _operation_id in OPERATION_IDS:
    globals()[f"test_fuzz_{_operation_id}"] = fuzz_test(_operation_id)


# Server bugs found by fuzzing: (id, method, path, request kwargs, expected status).
REGRESSIONS = [
    # A NUL in a name reached PostgreSQL, which refuses it in text: 500 (now 422).
    ("product-name-with-nul", "POST", "/api/products",
     {"json": {"price": 583.01, "stock": 24, "name": "ab\u0000"}}, 422),
    ("customer-name-with-lone-surrogate", "POST", "/api/customers",
     {"data": '{"name": "a\\ud800", "email": "s@example.com"}',
      "headers": {"Content-Type": "application/json"}}, 422),
]


@pytest.mark.parametrize(
    "method, path, kwargs, expected", [r[1:] for r in REGRESSIONS], ids=[r[0] for r in REGRESSIONS]
)
def test_fuzz_regression(seeded_api, http_session, method, path, kwargs, expected):
    response = http_session.request(method, f"{seeded_api}{path}", timeout=30, **kwargs)
    assert response.status_code == expected, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()) >= ({"error", "message", "details"} if expected >= 400 else set())
