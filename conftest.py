"""Fixtures shared by every test layer (unit, integration, end to end).

The eventlet monkey patch comes first, before anything imports socket, threading or
psycopg2: it is what ``nameko run`` does, and without it a worker waiting on a row lock
held by another worker of the same process blocks the whole process (psycopg2 is a C
driver; the patch gives it a cooperative wait callback).

Tests use their own databases (config.yml's names + ``_test_<pid>``, one set per test
session, dropped at its end), built once per session by
the Alembic migrations (so models and migrations cannot drift) and emptied before each
test that asks for ``clean_databases``. RabbitMQ isolation comes from nameko's pytest
plugin: ``rabbit_config`` is a fresh vhost per test.
"""

import eventlet

eventlet.monkey_patch()

import os  # noqa: E402

import pytest  # noqa: E402
from nameko_sqlalchemy.database import Session  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from common import admin  # noqa: E402
from common.config import load_config  # noqa: E402
from common.db import ShopDatabaseWrapper  # noqa: E402

# Per test session, so two runs at once (a developer's and CI's) never share tables.
TEST_DB_SUFFIX = f"_test_{os.getpid()}"


@pytest.fixture(scope="session")
def base_config():
    """config.yml as the services see it."""
    return load_config()


@pytest.fixture(scope="session")
def test_db_uris(base_config):
    """``{service: uri}`` of the test databases."""
    uris = {}
    for service in admin.SERVICES_WITH_DATABASE:
        url = make_url(base_config["DB_URIS"][f"{service}:Base"])
        uris[service] = url.set(database=url.database + TEST_DB_SUFFIX).render_as_string(
            hide_password=False
        )
    return uris


@pytest.fixture(scope="session")
def admin_uri(base_config):
    """The superuser's URI (DB_ADMIN_URI): creates and drops the test databases."""
    return base_config.get("DB_ADMIN_URI") or admin.DEFAULT_ADMIN_URI


@pytest.fixture(scope="session")
def databases(test_db_uris, admin_uri):
    """Fresh test databases, migrated to head, for the whole session; dropped after. Each
    is owned by its service's role (as `make setup` does) and migrated as that role, so
    the tests run with the services' privileges."""
    for service, uri in test_db_uris.items():
        admin.drop_database(uri, admin_uri)
        admin.create_database(uri, admin_uri)
        admin.migrate(service, uri)
    yield test_db_uris
    for uri in test_db_uris.values():
        admin.drop_database(uri, admin_uri)


@pytest.fixture(scope="session")
def db_engines(databases):
    engines = {
        service: create_engine(uri, pool_pre_ping=True) for service, uri in databases.items()
    }
    yield engines
    for engine in engines.values():
        engine.dispose()


@pytest.fixture
def clean_databases(db_engines):
    """Every table of every test database emptied, ids restarting at 1."""
    for engine in db_engines.values():
        admin.empty_tables(engine)
    return db_engines


@pytest.fixture
def db_wrapper(clean_databases):
    """``db_wrapper("products")``: what a service's ``db`` dependency gives a worker, on the
    real (clean) test database, for ``worker_factory(Service, db=...)``."""
    wrappers = []

    def make(service):
        engine = clean_databases[service]
        wrapper = ShopDatabaseWrapper(sessionmaker(bind=engine, class_=Session), engine)
        wrappers.append(wrapper)
        return wrapper

    yield make
    for wrapper in wrappers:
        wrapper.close()


@pytest.fixture
def service_config(base_config, rabbit_config, test_db_uris, clean_databases):
    """Container config for integration tests: config.yml on a fresh vhost and the clean
    test databases."""
    config = dict(base_config)
    config["AMQP_URI"] = rabbit_config["AMQP_URI"]
    config["DB_URIS"] = {f"{service}:Base": uri for service, uri in test_db_uris.items()}
    config.pop("LOGGING", None)
    return config
