"""Least privilege: each service reaches PostgreSQL as its own role, which owns its
database only, may connect to no other one, and can neither create databases nor
anything a superuser could (`make setup`, common/admin.ensure_owner). The test databases
are owned and migrated the same way (root conftest.py), so every test runs with these
privileges."""

import os

import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from common import admin


def connect(uri, **url_changes):
    engine = create_engine(
        make_url(uri).set(**url_changes), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    return engine, engine.connect()


def role(uri):
    return make_url(uri).username


def test_each_service_connects_as_its_own_role(databases):
    roles = {service: role(uri) for service, uri in databases.items()}
    assert len(set(roles.values())) == 3
    assert all(r != "postgres" for r in roles.values())
    for service, uri in databases.items():
        engine, conn = connect(uri)
        try:
            assert conn.scalar(text("SELECT current_user")) == roles[service]
            owners = (
                conn.execute(
                    text(
                        "SELECT pg_get_userbyid(d.datdba) FROM pg_database d WHERE datname = current_database() "
                        "UNION SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                    )
                )
                .scalars()
                .all()
            )
            assert owners == [roles[service]]  # database, tables, sequences, alembic_version
        finally:
            conn.close()
            engine.dispose()


def test_the_orders_role_cannot_connect_to_the_products_database(databases):
    products_db = make_url(databases["products"]).database
    with pytest.raises(OperationalError, match="permission denied for database"):
        connect(databases["orders"], database=products_db)


def test_the_products_role_cannot_read_the_orders_tables(databases, admin_uri):
    orders_db = make_url(databases["orders"]).database
    with pytest.raises(OperationalError, match="permission denied for database"):
        connect(databases["products"], database=orders_db)
    # Nor could it if it got in: no privilege on any of them.
    engine, conn = connect(admin_uri, database=orders_db)
    try:
        tables = conn.scalars(
            text("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        assert tables
        for table in tables:
            assert not conn.scalar(
                text("SELECT has_table_privilege(:r, :t, 'SELECT')"),
                {"r": role(databases["products"]), "t": f"public.{table}"},
            )
    finally:
        conn.close()
        engine.dispose()


@pytest.mark.parametrize("service", admin.SERVICES_WITH_DATABASE)
def test_a_role_is_no_superuser_and_cannot_create_databases_or_roles(databases, service):
    engine, conn = connect(databases[service])
    try:
        assert conn.execute(
            text(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
            )
        ).one() == (False, False, False)
        with pytest.raises(ProgrammingError, match="permission denied to create database"):
            conn.execute(text('CREATE DATABASE "least_privilege_probe"'))
        with pytest.raises(ProgrammingError, match="permission denied to create role"):
            conn.execute(text('CREATE ROLE "least_privilege_probe"'))
    finally:
        conn.close()
        engine.dispose()


def test_setup_re_owns_an_install_made_as_postgres(databases, admin_uri):
    """An existing install: database, tables, sequences and alembic_version all created
    by postgres. `make setup` (ensure_owner) hands them to the role, twice over the same."""
    name = f"shop_products_reown_{os.getpid()}"
    role_uri = (
        make_url(databases["products"]).set(database=name).render_as_string(hide_password=False)
    )
    old_uri = make_url(admin_uri).set(database=name).render_as_string(hide_password=False)
    admin.drop_database(old_uri, admin_uri)
    try:
        assert admin.create_database(old_uri) is True  # as postgres, like before
        admin.migrate("products", old_uri)
        engine, conn = connect(databases["orders"], database=name)  # open to PUBLIC then
        conn.close()
        engine.dispose()
        for _ in range(2):
            assert admin.create_database(role_uri, admin_uri) is False
            engine, conn = connect(admin_uri, database=name)
            try:
                owners = (
                    conn.execute(
                        text(
                            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :n "
                            "UNION SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                        ),
                        {"n": name},
                    )
                    .scalars()
                    .all()
                )
                assert owners == [role(role_uri)]
            finally:
                conn.close()
                engine.dispose()
        admin.migrate("products", role_uri)  # the role migrates its own database
        assert admin.schema_state("products", role_uri) == "current"
        with pytest.raises(OperationalError, match="permission denied for database"):
            connect(databases["orders"], database=name)
    finally:
        admin.drop_database(old_uri, admin_uri)
