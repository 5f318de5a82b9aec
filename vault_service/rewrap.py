"""``rmllm-vault rewrap``: re-encrypt every stored key under the current seed.

Rows whose ciphertext names another key id are re-encrypted one at a time, each
in its own transaction (row locked on PostgreSQL) with its own audit row, so an
interrupted run is resumed by running it again: rows already under the current key
are skipped. Once it reports no failures, the old seeds can be removed from
``RMLLM_VAULT_OLD_SEEDS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vault_service import accounts, audit
from vault_service.crypto import FORMAT_VERSION, DecryptionError, Keyring
from vault_service.database import Database

log = logging.getLogger(__name__)


@dataclass
class Counts:
    """What a rewrap did."""

    rewrapped: int = 0
    current: int = 0
    failed: int = 0


def _one(db: Database, keyring: Keyring, config_id: int, counts: Counts) -> None:
    model = db.tables.config
    with db.write():
        row = db.lock_for_update(model.select().where(model.id == config_id)).first()
        if row is None:
            return  # deleted since the scan
        if row.key_id == keyring.current.key_id and row.format_version == FORMAT_VERSION:
            counts.current += 1
            return
        old_key_id = row.key_id
        try:
            key = keyring.decrypt(bytes(row.ciphertext), row.user_id, row.provider)
        except DecryptionError as exc:
            log.error(
                "rewrap: cannot decrypt a stored key: %s",
                exc.why,
                extra={"key_id": exc.key_id, "provider": row.provider, "user_id": row.user_id},
            )
            audit.append(
                db,
                audit.Event(
                    accounts.OPERATOR,
                    "config.rewrap",
                    row.provider,
                    "KEY_DECRYPTION_FAILED",
                    detail=f"{row.user_id} key_id={exc.key_id}",
                ),
            )
            counts.failed += 1
            return
        model.update(
            ciphertext=keyring.encrypt(key, row.user_id, row.provider),
            key_id=keyring.current.key_id,
            format_version=FORMAT_VERSION,
        ).where(model.id == config_id).execute()
        audit.append(
            db,
            audit.Event(
                accounts.OPERATOR,
                "config.rewrap",
                row.provider,
                "ok",
                detail=f"{row.user_id} key_id={old_key_id}->{keyring.current.key_id}",
            ),
        )
        counts.rewrapped += 1


def rewrap(db: Database, keyring: Keyring) -> Counts:
    """Re-encrypt every row not under the current key; count what happened."""
    model = db.tables.config
    stale = (model.key_id != keyring.current.key_id) | (model.format_version != FORMAT_VERSION)
    counts = Counts(current=model.select().where(~stale).count())
    ids = [r for (r,) in model.select(model.id).where(stale).order_by(model.id).tuples()]
    for config_id in ids:
        _one(db, keyring, config_id, counts)
    return counts
