"""Models and migrations cannot drift: the Alembic-built test databases match the models."""

import json

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from common import admin


@pytest.mark.parametrize("service", admin.SERVICES_WITH_DATABASE)
def test_models_match_migrations(databases, service):
    command.check(admin.alembic_config(service, databases[service]))  # raises on any diff


@pytest.mark.parametrize("service", admin.SERVICES_WITH_DATABASE)
def test_every_migration_downgrades_and_upgrades(databases, service):
    config = admin.alembic_config(service, databases[service])
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    command.check(config)


@pytest.mark.parametrize("service", admin.SERVICES_WITH_DATABASE)
def test_schema_state_follows_the_migrations(databases, service):
    """What the Kubernetes schema wait (scripts/manage.py wait-schema) reads."""
    uri = databases[service]
    config = admin.alembic_config(service, uri)
    assert admin.schema_state(service, uri) == "current"
    command.downgrade(config, "-1")
    try:
        assert admin.schema_state(service, uri) == "behind"
    finally:
        command.upgrade(config, "head")
    assert admin.schema_state(service, uri) == "current"


def test_migrate_leaves_a_newer_schema_alone_on_a_rollback(databases, capsys):
    """The migration Job runs `migrate --allow-ahead`: older code meeting a database that
    newer code migrated leaves it as it is (plain `migrate` fails on the unknown revision)."""
    from scripts import manage

    config = {"DB_URIS": {f"{service}:Base": uri for service, uri in databases.items()}}
    engine = create_engine(databases["orders"])
    with engine.begin() as conn:
        head = conn.scalar(text("SELECT version_num FROM alembic_version"))
    try:
        with engine.begin() as conn:  # as if newer code had migrated it
            conn.execute(text("UPDATE alembic_version SET version_num = 'fffffffffff0'"))
        assert admin.schema_state("orders", databases["orders"]) == "ahead"
        manage.cmd_migrate(manage.build_parser().parse_args(["migrate", "--allow-ahead"]), config)
        assert "orders: migrated by newer code, left as it is" in capsys.readouterr().out
        with pytest.raises(Exception, match="fffffffffff0"):
            manage.cmd_migrate(manage.build_parser().parse_args(["migrate"]), config)
    finally:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
        engine.dispose()


def test_orders_failures_drop_their_class_paths_and_a_downgrade_restores_them(databases):
    """orders 0004: a stored failure names its error by code only (orders/flow.py rebuilds
    it from the code); the downgrade writes back the class path the former code reads."""
    uri = databases["orders"]
    config = admin.alembic_config("orders", uri)
    engine = create_engine(uri)
    stored = {
        "mig-0004-a": {
            "error": "insufficient_stock",
            "message": "not enough stock",
            "details": {"products": []},
            "status": 409,
            "exc_path": "products.exceptions.InsufficientStock",
        },
        "mig-0004-b": {
            "error": "timeout",
            "message": "slow",
            "details": {},
            "status": 504,
            "exc_path": "common.errors.GatewayTimeout",
        },
        "mig-0004-c": {
            "error": "some_future_code",
            "message": "?",
            "details": {},
            "status": 500,
            "exc_path": "somewhere.Else",
        },
    }

    def failures():
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT order_ref, failure FROM orders WHERE order_ref LIKE 'mig-0004-%'")
            ).all()
        return dict(rows)

    command.downgrade(config, "0003")
    try:
        with engine.begin() as conn:
            for ref, failure in [*stored.items(), ("mig-0004-d", None)]:
                conn.execute(
                    text(
                        "INSERT INTO orders (order_ref, customer_id, status, requested, failure) "
                        "VALUES (:ref, 1, 'rejected', '[]', CAST(:failure AS JSONB))"
                    ),
                    {"ref": ref, "failure": None if failure is None else json.dumps(failure)},
                )
        command.upgrade(config, "0004")
        without_paths = {
            ref: {k: v for k, v in failure.items() if k != "exc_path"}
            for ref, failure in stored.items()
        }
        assert failures() == {**without_paths, "mig-0004-d": None}

        command.downgrade(config, "0003")
        assert failures() == {
            **stored,
            "mig-0004-c": without_paths["mig-0004-c"],  # an unknown code gets no path
            "mig-0004-d": None,
        }
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM orders WHERE order_ref LIKE 'mig-0004-%'"))
        command.upgrade(config, "head")
        engine.dispose()
