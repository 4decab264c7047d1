"""The body of every service's Alembic ``env.py``.

The database URL is, in order: ``sqlalchemy.url`` set on the Alembic config (tests do
this), else the service's entry in config.yml's ``DB_URIS`` (environment substituted).
"""

import importlib.util
import os
from types import ModuleType
from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool

from common.config import load_config


def database_uri(service_name: str, base_name: str = "Base") -> str:
    return load_config()["DB_URIS"][f"{service_name}:{base_name}"]


def run_migrations(service_name: str, target_metadata: Any) -> None:
    url = context.config.get_main_option("sqlalchemy.url") or database_uri(service_name)
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


def revision_module(versions_dir: str, filename: str) -> ModuleType:
    """The migration ``filename`` of ``versions_dir``, loaded as a plain module (not run):
    a later revision's ``downgrade`` puts back an earlier one's SQL from it, and tests
    compare the two."""
    path = os.path.join(versions_dir, filename)
    spec = importlib.util.spec_from_file_location(f"revision_{filename[:-3]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
