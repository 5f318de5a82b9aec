"""The database's own error reaches the log and the caller, not the failed rollback after it.

Issue 13 item 11: on a full disk (or a read-only file) SQLite ends the transaction
itself, peewee's rollback then fails with "cannot rollback - no transaction is
active", and that was all the log said. A ``max_page_count`` the database has
already reached makes SQLite answer "database or disk is full" exactly as a full
disk does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import peewee as pw
import pytest

from rmllm_common.errors import Unavailable
from vault_service import audit, migrations
from vault_service.database import Database


def _write_until_full(db: Database) -> None:
    pages = db.db.execute_sql("PRAGMA page_count").fetchone()[0]
    db.db.execute_sql(f"PRAGMA max_page_count = {pages}")
    try:
        with db.write():
            for _ in range(50):
                audit.append(db, audit.Event(actor="operator", action="fill", detail="x" * 4000))
    finally:
        db.db.execute_sql("PRAGMA max_page_count = 1073741823")


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'vault.sqlite3'}")
    migrations.migrate(db)
    return db


def test_a_full_disk_is_raised_as_itself(database: Database) -> None:
    try:
        with pytest.raises(pw.OperationalError) as caught:
            database.call(_write_until_full, database)
        assert "database or disk is full" in str(caught.value)
        report = database.call(audit.verify, database)
        assert report.ok and report.rows == 0  # nothing half-written
    finally:
        database.close()


async def test_a_full_disk_is_logged_once_as_itself(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(Unavailable) as caught:
            await database.run(_write_until_full, database)
        assert caught.value.reason == "DATABASE_UNAVAILABLE"
        assert "database or disk is full" in str(caught.value.__cause__)
        lines = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "database_error"]
        assert lines == ["database call failed: database or disk is full"]
        assert "cannot rollback" not in caplog.text
        # The database works again once there is room.
        await database.run(audit.record, database, audit.Event(actor="operator", action="after"))
    finally:
        database.close()
