"""A throwaway PostgreSQL schema for tests that run services as processes.

``schema_url()`` makes a schema in the local database ``test`` (trust auth on
127.0.0.1:5432), yields a ``postgresql://`` URL whose ``search_path`` is that
schema (what ``RMLLM_DATABASE_URL`` takes), and drops it afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import peewee as pw

ADMIN: dict[str, Any] = {"database": "test", "host": "127.0.0.1", "port": 5432, "user": "postgres"}


@contextmanager
def schema_url(prefix: str = "e2e") -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema, dropped on exit."""
    schema = f"{prefix}_{secrets.token_hex(6)}"
    admin: Any = pw.PostgresqlDatabase(**ADMIN)
    admin.execute_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D{schema}"
    finally:
        admin.execute_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
