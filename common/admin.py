"""Database administration shared by `make setup`/`make migrate` and the test suite."""
import os

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from common.config import ROOT

SERVICES_WITH_DATABASE = ("customers", "products", "orders")


def _server_engine(uri):
    """An autocommit engine on the maintenance database of ``uri``'s server."""
    return create_engine(
        make_url(uri).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )


def create_database(uri):
    """Create the database named in ``uri`` unless it exists; True if it was created."""
    name = make_url(uri).database
    engine = _server_engine(uri)
    try:
        with engine.connect() as conn:
            exists = conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            return not exists
    finally:
        engine.dispose()


def drop_database(uri):
    """Drop the database named in ``uri`` (closing its connections) if it exists."""
    name = make_url(uri).database
    engine = _server_engine(uri)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def alembic_config(service, uri=None):
    config = AlembicConfig(os.path.join(ROOT, service, "alembic.ini"))
    if uri:
        config.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    return config


def migrate(service, uri=None, revision="head"):
    """Alembic upgrade of ``service``'s database (``uri`` defaults to config.yml's)."""
    command.upgrade(alembic_config(service, uri), revision)
