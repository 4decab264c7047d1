"""Models and migrations cannot drift: the Alembic-built test databases match the models."""
import pytest
from alembic import command

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
