"""Database administration shared by `make setup`/`make migrate` and the test suite."""
import os

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, pool, text
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


def compare_heads(script, current):
    """Where a database stands against this code's migrations: ``"current"`` (at the
    head), ``"behind"`` (a migration of this code is still to run) or ``"ahead"`` (it
    carries a revision this code does not know: newer code migrated it, and this is a
    rollback, which expand-then-contract migrations allow). ``script`` is an Alembic
    ``ScriptDirectory``, ``current`` the database's revisions (empty: never migrated)."""
    current = set(current)
    for revision in current:
        try:
            script.get_revision(revision)
        except CommandError:  # alembic.util.CommandError: no such revision in this code
            return "ahead"
    return "current" if current == set(script.get_heads()) else "behind"


def schema_state(service, uri):
    """:func:`compare_heads` for ``service``'s database at ``uri`` (reads, never writes)."""
    script = ScriptDirectory.from_config(alembic_config(service, uri))
    engine = create_engine(uri, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return compare_heads(script, current)
