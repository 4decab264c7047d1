"""Database access shared by the services.

:class:`Database` is nameko-sqlalchemy's dependency with production engine defaults, all
overridable in config.yml under ``DB_ENGINE_OPTIONS``:

* ``pool_pre_ping``: a connection that died with a PostgreSQL restart is replaced, not used;
* ``pool_size`` equal to the container's ``max_workers`` (a worker uses one connection at
  most), so a process never holds more: PostgreSQL's default ``max_connections`` of 100
  fits `make up` and the test suite's stacks at once;
* ``lock_timeout`` / ``statement_timeout`` (``DB_LOCK_TIMEOUT_MS``, ``DB_STATEMENT_TIMEOUT_MS``):
  a worker waiting on a row lock gives up instead of waiting forever;
* ``idle_in_transaction_session_timeout`` (``DB_IDLE_IN_TRANSACTION_TIMEOUT_MS``): a
  transaction left open by a stuck or dead worker is ended by PostgreSQL, which bounds
  how long an order can stay invisible (products' reconciler relies on it).
"""
from contextlib import contextmanager

from nameko_sqlalchemy import Database as NamekoDatabase
from nameko_sqlalchemy.database import DB_ENGINE_OPTIONS_KEY
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from common.errors import ServiceUnavailable

DEFAULT_LOCK_TIMEOUT_MS = 5000
DEFAULT_STATEMENT_TIMEOUT_MS = 15000
DEFAULT_IDLE_IN_TRANSACTION_MS = 30000
MAX_INT4 = 2**31 - 1


def engine_options(config):
    """Engine keyword arguments for a service container's ``config``."""
    lock_ms = int(config.get("DB_LOCK_TIMEOUT_MS", DEFAULT_LOCK_TIMEOUT_MS))
    statement_ms = int(config.get("DB_STATEMENT_TIMEOUT_MS", DEFAULT_STATEMENT_TIMEOUT_MS))
    idle_ms = int(config.get("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", DEFAULT_IDLE_IN_TRANSACTION_MS))
    options = {
        "pool_pre_ping": True,
        "pool_size": int(config.get("max_workers", 10)),
        "max_overflow": 0,  # a worker holds one connection at most: never more than max_workers
        "connect_args": {
            "options": (
                f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms} "
                f"-c idle_in_transaction_session_timeout={idle_ms}"
            ),
            "connect_timeout": 5,
        },
    }
    options.update(config.get(DB_ENGINE_OPTIONS_KEY) or {})
    return options


class Database(NamekoDatabase):
    """nameko-sqlalchemy ``Database`` whose engine is built with :func:`engine_options`."""

    def setup(self):
        self.engine_options = {**engine_options(self.container.config), **self.engine_options}
        super().setup()


def is_valid_id(value):
    """True if ``value`` can be a primary key of an ``integer`` column."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT4


@contextmanager
def database_errors_as_unavailable():
    """Turn PostgreSQL being unreachable or busy (``OperationalError``: connection lost,
    ``lock_timeout``, ``statement_timeout``) into a retryable 503. The transaction it
    interrupted is rolled back by the session, so nothing was written."""
    try:
        yield
    except OperationalError as exc:
        code = getattr(exc.orig, "pgcode", None)
        raise ServiceUnavailable(
            "the database is unavailable or busy; retry later",
            {"reason": "database", "pgcode": code},
        ) from None


def check_database(db):
    """``"ok"`` if the database answers ``SELECT 1``; raises ServiceUnavailable."""
    with database_errors_as_unavailable():
        db.session.execute(text("SELECT 1"))
    return "ok"
