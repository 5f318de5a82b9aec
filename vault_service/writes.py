"""What the vault's group writer commits: every resolve's use and audit row, and every usage batch.

One ``GroupCommit`` (``vault_service/groupcommit.py``) takes both kinds of write
in flight and applies them in one transaction: the resolves' use counts and audit
rows first (the audit chain's head read and advanced once for all of them), then
each usage batch (``ledger.store``: insert, roll up, note budget spend). A caller
is answered once the transaction that holds its write has committed; a usage
batch's outcome (records accepted, duplicates) is left on the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vault_service import configs, ledger
from vault_service.database import Database


@dataclass(slots=True)
class UsageBatch:
    """One ReportUsage message's records, already checked; ``ingested`` is set once committed."""

    entries: Sequence[ledger.Entry]
    ingested: ledger.Ingested | None = None


Write = configs.Use | UsageBatch


def apply(db: Database, items: Sequence[Write]) -> None:
    """Apply one group's writes; call inside its write transaction."""
    uses = [item for item in items if isinstance(item, configs.Use)]
    if uses:
        configs.record_uses(db, uses)
    for item in items:
        if isinstance(item, UsageBatch):
            item.ingested = ledger.store(db, item.entries)
