"""Models and migrations cannot drift: the Alembic-built test databases match the models."""

import ast
import json
import os
import re
from types import SimpleNamespace

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from common import admin
from common.config import ROOT
from scripts import releases


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


# -- expand / contract (docs/DEPLOY.md, "Migrations: expand, then contract") --

# Alembic operations an expand migration may not call: each removes, renames or narrows
# something the previous release's code may use.
DESTRUCTIVE_OPS = {
    "drop_table",
    "drop_column",
    "drop_constraint",
    "drop_index",
    "drop_table_comment",
    "drop_column_comment",
    "rename_table",
}
# In an expand migration's SQL (function bodies between $$ left out: they run later, as
# the code calls them): statements that remove or narrow.
DESTRUCTIVE_SQL = re.compile(
    r"\b(DROP|RENAME|TRUNCATE|DELETE)\b|\bALTER\b[^;]*\b(TYPE|SET\s+NOT\s+NULL)\b", re.I
)
DOLLAR_QUOTED = re.compile(r"\$(\w*)\$.*?\$\1\$", re.S)


def destructive_operations(source):
    """What an expand migration's ``upgrade()`` (in ``source``) must not do: calls of
    :data:`DESTRUCTIVE_OPS`, ``alter_column`` with a new type or name or made NOT NULL,
    and SQL matching :data:`DESTRUCTIVE_SQL` in a string given to ``op.execute``."""
    tree = ast.parse(source)
    upgrade = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "upgrade"
    )
    constants = {  # module-level NAME = "..." (SQL kept in constants, as 0003 does)
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }
    found = []
    for call in (node for node in ast.walk(upgrade) if isinstance(node, ast.Call)):
        name = getattr(call.func, "attr", None)
        keywords = {kw.arg: kw.value for kw in call.keywords}
        if name in DESTRUCTIVE_OPS:
            found.append(name)
        elif name == "alter_column":
            nullable = keywords.get("nullable")
            if "type_" in keywords or "new_column_name" in keywords:
                found.append("alter_column (type or name)")
            elif isinstance(nullable, ast.Constant) and nullable.value is False:
                found.append("alter_column (NOT NULL)")
        elif name == "execute" and call.args:
            arg = call.args[0]
            sql = (
                arg.value
                if isinstance(arg, ast.Constant)
                else constants.get(arg.id, "")
                if isinstance(arg, ast.Name)
                else ""
            )
            match = DESTRUCTIVE_SQL.search(DOLLAR_QUOTED.sub("", str(sql)))
            if match:
                found.append(f"execute ({match.group(0)})")
    return found


def migrations():
    """``(service, revision, path relative to the repository)`` of every migration,
    oldest first per service."""
    for service in admin.SERVICES_WITH_DATABASE:
        script = ScriptDirectory.from_config(admin.alembic_config(service))
        for revision in reversed(list(script.walk_revisions())):
            yield service, revision, os.path.relpath(revision.path, ROOT)


def contract_problems(revision, path, known, file_at):
    """Why contract migration ``revision`` (at ``path``) breaks the rule, or None: one
    that no recorded release carries yet must name in ``UNUSED_SINCE`` a release of
    ``known`` (scripts/releases.Releases) that does not carry it either, i.e. the
    contract ships at least one release after the code stopped using what it removes
    (that release may run beside the schema, or be rolled back to). ``file_at(commit,
    path)`` is the file at a commit or None (scripts/releases.file_at). Contracts carried
    by the oldest recorded release came before the rule."""
    oldest = next(iter(known.tags.values()))
    if file_at(oldest, path) is not None:
        return None
    since = getattr(revision.module, "UNUSED_SINCE", None)
    if since not in known.tags:
        return f"{path}: UNUSED_SINCE must name a release of deploy/RELEASES, not {since!r}"
    if file_at(known.tags[since], path) is not None:
        return f"{path}: {since} already carries it: ship the contract in a later release"
    return None


def test_every_migration_declares_its_phase():
    phases = {
        (service, rev.revision): admin.migration_phase(rev) for service, rev, _ in migrations()
    }
    assert phases[("products", "0003")] == admin.EXPAND
    assert phases[("products", "0002")] == admin.CONTRACT  # it drops columns


def test_expand_migrations_add_only():
    for _, revision, path in migrations():
        if admin.migration_phase(revision) == admin.EXPAND:
            with open(revision.path) as stream:
                assert destructive_operations(stream.read()) == [], path


def test_the_expand_check_finds_what_removes_or_narrows():
    source = """
SQL = "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ DELETE FROM t $$"
GONE = "DROP FUNCTION g()"
def upgrade():
    op.execute(SQL)  # a DELETE in a function body is not run by the migration
    op.add_column("t", sa.Column("c", sa.Integer(), nullable=True))
    op.drop_column("t", "old")
    op.alter_column("t", "c", nullable=False)
    op.alter_column("t", "d", type_=sa.Text())
    op.execute(GONE)
    op.execute("ALTER TABLE t ALTER COLUMN e SET NOT NULL")
"""
    assert destructive_operations(source) == [
        "drop_column",
        "alter_column (NOT NULL)",
        "alter_column (type or name)",
        "execute (DROP)",
        "execute (ALTER TABLE t ALTER COLUMN e SET NOT NULL)",
    ]


def test_contracts_ship_a_release_after_the_code_stopped_using_what_they_drop():
    known = releases.read_releases()
    for commit in known.tags.values():
        releases.git("cat-file", "-e", f"{commit}^{{commit}}")  # every release is in the history
    problems = [
        contract_problems(revision, path, known, releases.file_at)
        for _, revision, path in migrations()
        if admin.migration_phase(revision) == admin.CONTRACT
    ]
    assert [problem for problem in problems if problem] == []


def test_the_contract_check_wants_a_release_in_between():
    known = releases.Releases({"r1": "a" * 40, "r2": "b" * 40}, "r1")
    carried = {("a" * 40, "old.py"), ("b" * 40, "old.py"), ("b" * 40, "early.py")}

    def file_at(commit, path):
        return "..." if (commit, path) in carried else None

    def contract(**attributes):
        return SimpleNamespace(module=SimpleNamespace(PHASE="contract", **attributes))

    assert contract_problems(contract(), "old.py", known, file_at) is None  # before the rule
    assert "UNUSED_SINCE" in contract_problems(contract(), "new.py", known, file_at)
    assert contract_problems(contract(UNUSED_SINCE="r2"), "new.py", known, file_at) is None
    assert "already carries" in contract_problems(
        contract(UNUSED_SINCE="r2"), "early.py", known, file_at
    )


def test_an_upgrade_applies_its_expands_before_its_contracts():
    """Among the migrations the previous release (deploy/RELEASES' upgrade-from) lacks,
    no expand comes after a contract: `migrate --phase expand` stops at the first
    contract, and the new code needs every expand before it starts."""
    known = releases.read_releases()
    previous = releases.resolve(known.upgrade_from, known)
    for service in admin.SERVICES_WITH_DATABASE:
        new = [
            admin.migration_phase(revision)
            for name, revision, path in migrations()
            if name == service and releases.file_at(previous, path) is None
        ]
        assert new == sorted(new, key=admin.PHASES.index), (service, new)


def test_the_expand_phase_stops_before_the_first_pending_contract(databases, capsys):
    """orders: 0002 contract, 0003 expand, 0004 contract. From 0002, `migrate --phase
    expand` applies 0003 only; `--phase contract` then the rest, to the head; again,
    nothing."""
    from scripts import manage

    uri = databases["orders"]
    config = admin.alembic_config("orders", uri)
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert admin.phase_target(script, ["0001"], admin.EXPAND) is None
    assert admin.phase_target(script, ["0001"], admin.CONTRACT) == head
    manage_config = {"DB_URIS": {f"{service}:Base": uri for service, uri in databases.items()}}
    command.downgrade(config, "0002")
    try:
        for phase, said, at in [
            ("expand", "orders: expand phase, migrated to 0003", "0003"),
            ("contract", f"orders: contract phase, migrated to {head}", head),
            ("contract", "orders: contract phase, nothing pending", head),
        ]:
            manage.cmd_migrate(
                manage.build_parser().parse_args(["migrate", "--phase", phase]), manage_config
            )
            assert said in capsys.readouterr().out.splitlines()
            assert admin.current_revisions(uri) == (at,)
    finally:
        command.upgrade(config, "head")
    assert admin.schema_state("orders", uri) == "current"
