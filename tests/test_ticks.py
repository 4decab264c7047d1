"""common.ticks: what a timer's body may fail with quietly, and what still crashes."""

import logging

import pytest
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from common.errors import GatewayTimeout, ServiceUnavailable
from common.ticks import retried_at_next_tick

log = logging.getLogger("tests.ticks")


class TooManyClients(Exception):
    """Stands for psycopg2's OperationalError: its message is the server's, multi-line."""


@pytest.mark.parametrize(
    "error, logged",
    [
        (
            OperationalError(
                "SELECT secret FROM t WHERE x = %(x)s",
                {"x": "param"},
                TooManyClients(
                    'connection to server at "127.0.0.1", port 5432 failed: FATAL:  sorry, too many '
                    "clients already\n"
                ),
            ),
            'TooManyClients: connection to server at "127.0.0.1", port 5432 failed: FATAL: sorry, '
            "too many clients already",
        ),
        (
            InterfaceError("SELECT 1", {}, TooManyClients("connection already closed")),
            "TooManyClients: connection already closed",
        ),
        (
            PoolTimeoutError("QueuePool limit of size 6 overflow 0 reached"),
            "TimeoutError: QueuePool limit of size 6 overflow 0 reached",
        ),
        (
            GatewayTimeout("orders.order_states did not answer within 5s"),
            "GatewayTimeout: orders.order_states did not answer within 5s",
        ),
        (
            ServiceUnavailable("service 'orders' is not running"),
            "ServiceUnavailable: service 'orders' is not running",
        ),
    ],
)
def test_a_transient_failure_is_one_warning_line(caplog, error, logged):
    @retried_at_next_tick(log, "the job")
    def tick():
        raise error

    assert tick() is None
    [record] = caplog.records
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert record.getMessage() == f"the job postponed to the next tick: {logged}"
    assert "secret" not in record.getMessage() and "param" not in record.getMessage()
    assert (record.event, record.job, record.error) == (
        "tick_postponed",
        "the job",
        type(error).__name__,
    )


@pytest.mark.parametrize(
    "error",
    [
        ProgrammingError("SELECT nope", {}, Exception("column nope does not exist")),
        TypeError("a bug"),
    ],
)
def test_anything_else_is_raised(caplog, error):
    with pytest.raises(type(error)):
        with retried_at_next_tick(log, "the job"):
            raise error
    assert caplog.records == []


def test_a_tick_that_succeeds_logs_nothing(caplog):
    with retried_at_next_tick(log, "the job"):
        pass
    assert caplog.records == []
