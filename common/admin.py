"""Database administration shared by `make setup`/`make migrate` and the test suite."""

import os
from collections.abc import Iterable

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from common import registry
from common.config import ROOT

SERVICES_WITH_DATABASE = registry.SERVICES


DEFAULT_ADMIN_URI = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _server_engine(uri, admin_uri=None):
    """An autocommit engine on the maintenance database of the server: ``admin_uri``'s
    (a superuser's, DB_ADMIN_URI) when given, else ``uri``'s with ``uri``'s credentials."""
    url = make_url(admin_uri) if admin_uri else make_url(uri).set(database="postgres")
    return create_engine(url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)


def _ident(name):
    return '"' + name.replace('"', '""') + '"'


def _literal(value):
    """A string literal for a statement given to ``text()`` (whose ``:name`` is a bind)."""
    return "'" + value.replace("'", "''").replace(":", r"\:") + "'"


def create_database(uri: str, admin_uri: str | None = None) -> bool:
    """Create the database named in ``uri`` unless it exists; True if it was created.
    With ``admin_uri``, created by that (super)user and owned by ``uri``'s role (see
    :func:`ensure_owner`, which also re-owns an existing one)."""
    if admin_uri:
        return ensure_owner(uri, admin_uri)
    name = make_url(uri).database
    engine = _server_engine(uri)
    try:
        with engine.connect() as conn:
            exists = conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not exists:
                conn.execute(text(f"CREATE DATABASE {_ident(name)}"))
            return not exists
    finally:
        engine.dispose()


def ensure_owner(uri: str, admin_uri: str) -> bool:
    """Least privilege, idempotently, as the superuser of ``admin_uri``: the role of
    ``uri`` exists (LOGIN, NOSUPERUSER, NOCREATEDB, NOCREATEROLE; its password set when
    ``uri`` carries one), the database of ``uri`` exists and is owned by it, only it (and
    superusers) may connect to the database, and every relation and type of its public
    schema (tables, sequences, alembic_version: an install made as ``postgres`` before)
    is the role's. True if the database was created."""
    url = make_url(uri)
    name, role = url.database, url.username
    if not role:
        raise ValueError(f"no role (user) in the database URI of {name}")
    engine = _server_engine(uri, admin_uri)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT rolsuper, rolcanlogin AND NOT rolcreatedb AND NOT rolcreaterole "
                    "FROM pg_roles WHERE rolname = :r"
                ),
                {"r": role},
            ).first()
            if found and found[0]:  # a URI still naming the superuser: nothing to narrow down
                return _create_only(conn, name, role)
            attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
            if url.password:
                attributes += f" PASSWORD {_literal(url.password)}"
            if found is None:
                try:
                    conn.execute(text(f"CREATE ROLE {_ident(role)} {attributes}"))
                except DBAPIError as error:  # created meanwhile (two test sessions at once)
                    # duplicate_object, or unique_violation when the race is that close
                    if getattr(error.orig, "pgcode", None) not in ("42710", "23505"):
                        raise
                    found = (False, False)
            if found is not None and (not found[1] or url.password):
                # ALTER only when needed: two sessions altering one role at once can fail
                conn.execute(text(f"ALTER ROLE {_ident(role)} {attributes}"))
            created = _create_only(conn, name, role)
            if not created:
                conn.execute(text(f"ALTER DATABASE {_ident(name)} OWNER TO {_ident(role)}"))
            conn.execute(text(f"REVOKE CONNECT, TEMPORARY ON DATABASE {_ident(name)} FROM PUBLIC"))
            conn.execute(
                text(f"GRANT CONNECT, TEMPORARY ON DATABASE {_ident(name)} TO {_ident(role)}")
            )
    finally:
        engine.dispose()
    if not created:
        _reown_objects(admin_uri, name, role)
    return created


def _create_only(conn, name, role):
    exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name})
    if not exists:
        conn.execute(text(f"CREATE DATABASE {_ident(name)} OWNER {_ident(role)}"))
    return not exists


def _reown_objects(admin_uri, name, role):
    """Every table, view, sequence and type of the public schema of database ``name``
    owned by ``role`` (REASSIGN OWNED BY postgres would also try the system's objects).
    Tables first: a sequence owned by a column follows its table."""
    engine = create_engine(
        make_url(admin_uri).set(database=name),
        isolation_level="AUTOCOMMIT",
        poolclass=pool.NullPool,
    )
    relations = text(
        "SELECT c.relkind, quote_ident(c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = ANY(:kinds) "
        "AND pg_get_userbyid(c.relowner) <> :role"
    )
    try:
        with engine.connect() as conn:
            for kinds in (["r", "p"], ["v", "m", "S"]):
                for kind, rel in conn.execute(relations, {"kinds": kinds, "role": role}).all():
                    what = {"v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}.get(
                        kind, "TABLE"
                    )
                    conn.execute(text(f"ALTER {what} public.{rel} OWNER TO {_ident(role)}"))
            types = conn.scalars(
                text(
                    "SELECT quote_ident(t.typname) FROM pg_type t "
                    "JOIN pg_namespace n ON n.oid = t.typnamespace "
                    "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd') "
                    "AND pg_get_userbyid(t.typowner) <> :role"
                ),
                {"role": role},
            ).all()
            for typ in types:
                conn.execute(text(f"ALTER TYPE public.{typ} OWNER TO {_ident(role)}"))
    finally:
        engine.dispose()


def drop_database(uri: str, admin_uri: str | None = None) -> None:
    """Drop the database named in ``uri`` (closing its connections) if it exists."""
    name = make_url(uri).database
    engine = _server_engine(uri, admin_uri)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)"))
    finally:
        engine.dispose()


def empty_tables(engine: Engine) -> None:
    """Empty every table of ``engine``'s database but Alembic's, ids restarting at 1 (the
    tests' clean slate, and the bench's)."""
    with engine.begin() as conn:
        tables = conn.scalars(
            text(
                "SELECT quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        ).all()
        if tables:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


def alembic_config(service: str, uri: str | None = None) -> AlembicConfig:
    config = AlembicConfig(os.path.join(ROOT, service, "alembic.ini"))
    if uri:
        config.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    return config


def migrate(service: str, uri: str | None = None, revision: str = "head") -> None:
    """Alembic upgrade of ``service``'s database (``uri`` defaults to config.yml's)."""
    command.upgrade(alembic_config(service, uri), revision)


def compare_heads(script: ScriptDirectory, current: Iterable[str]) -> str:
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


def current_revisions(uri: str) -> tuple[str, ...]:
    """The Alembic revisions the database at ``uri`` is at (empty: never migrated)."""
    engine = create_engine(uri, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return tuple(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def schema_state(service: str, uri: str) -> str:
    """:func:`compare_heads` for ``service``'s database at ``uri`` (reads, never writes)."""
    script = ScriptDirectory.from_config(alembic_config(service, uri))
    return compare_heads(script, current_revisions(uri))


# -- expand / contract (docs/DEPLOY.md, "Migrations: expand, then contract") --
EXPAND = "expand"  # adds only: the previous release's code runs on the result
CONTRACT = "contract"  # removes or narrows what only an older release used
PHASES = (EXPAND, CONTRACT)


def migration_phase(revision: Script) -> str:
    """The ``PHASE`` an Alembic revision's module declares, ``"expand"`` or
    ``"contract"``; ValueError if it declares none (every migration must)."""
    phase = getattr(revision.module, "PHASE", None)
    if phase not in PHASES:
        raise ValueError(f"{revision.path}: PHASE must be one of {PHASES}, not {phase!r}")
    return phase


def pending_revisions(script: ScriptDirectory, current: Iterable[str]) -> list[Script]:
    """The revisions an upgrade to head applies to a database at ``current`` (empty:
    never migrated), oldest first. The histories are linear (one head per service)."""
    lower = list(current) or ["base"]
    if len(lower) > 1 or len(script.get_heads()) > 1:
        raise ValueError("expand/contract phases need one linear history per service")
    return list(reversed(list(script.iterate_revisions("heads", lower[0]))))


def phase_target(script: ScriptDirectory, current: Iterable[str], phase: str) -> str | None:
    """Where ``migrate --phase`` takes a database at ``current``: for ``"contract"`` the
    head; for ``"expand"`` the last pending revision before the first pending contract
    (what the new release's code needs, and the previous release's still runs on).
    None: nothing to apply."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
    target = None
    for revision in pending_revisions(script, current):
        if phase == EXPAND and migration_phase(revision) == CONTRACT:
            break
        target = revision.revision
    return target


def migrate_phase(service: str, uri: str, phase: str) -> str | None:
    """Alembic upgrade of ``service``'s database at ``uri`` to :func:`phase_target`;
    returns the revision it now is at, or None if nothing was pending."""
    config = alembic_config(service, uri)
    target = phase_target(ScriptDirectory.from_config(config), current_revisions(uri), phase)
    if target is not None:
        command.upgrade(config, target)
    return target
