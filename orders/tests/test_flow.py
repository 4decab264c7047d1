"""A stored failure names its error by code; the code rebuilds the same class."""

import pytest

from common.errors import BY_CODE, GatewayTimeout, InternalError, ShopError
from orders import flow


@pytest.mark.parametrize("code", sorted(BY_CODE))
def test_a_stored_failure_rebuilds_its_class_from_its_code(code):
    cls = BY_CODE[code]
    record = flow.error_record(cls("it failed", {"order_id": 3}))
    assert set(record) == {"error", "message", "details", "status"}  # no class path
    assert (record["error"], record["status"]) == (code, cls.status)
    rebuilt = flow.stored_error(record)
    assert type(rebuilt) is cls
    assert (rebuilt.status, rebuilt.to_dict()) == (
        cls.status,
        {"error": code, "message": "it failed", "details": {"order_id": 3}},
    )


def test_a_record_stored_with_a_class_path_is_rebuilt_by_its_code():
    """A row not yet migrated (orders 0004): its exc_path is ignored."""
    record = {
        "error": "timeout",
        "message": "slow",
        "details": {},
        "status": 504,
        "exc_path": "somewhere.Renamed",
    }
    assert type(flow.stored_error(record)) is GatewayTimeout


def test_an_unknown_code_is_a_shop_error():
    rebuilt = flow.stored_error({"error": "gone", "message": "m", "details": {}, "status": 409})
    assert type(rebuilt) is ShopError and rebuilt.message == "m"


def test_the_base_class_is_stored_as_an_internal_error():
    assert type(flow.stored_error(flow.error_record(ShopError("x")))) is InternalError
