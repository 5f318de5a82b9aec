"""Provider configurations in the database: upsert, update, read, delete and resolve.

These functions run on the database threads (``Database.run``; ``lookup``, the
hot read, through ``Database.read``: on the event loop on SQLite). Every write is
one transaction with its audit row. The key is encrypted before the transaction
and decrypted only by ``lookup`` (the read half of a resolve), whose ``Use`` (the
usage counter and the audit row) must commit before the plaintext leaves: the
server hands it to ``groupcommit`` and answers once its batch is durable.
A resolve is the hot path of every cache miss: one indexed query (token hash →
user → config, and whether any budget or policy applies), one AES-GCM
decryption, and a share of one batched commit (one UPDATE for the batch's use
counts, multi-row INSERTs for its audit rows).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rmllm_common.errors import (
    KeyDecryptionFailed,
    KeyNotConfigured,
    NotFound,
    RmllmError,
    TokenInvalid,
    UserDisabled,
)
from rmllm_common.secret import Secret
from vault_service import accounts, audit, metrics
from vault_service.crypto import FORMAT_VERSION, DecryptionError, Keyring
from vault_service.database import Database
from vault_service.invalidations import Kind, record_change

log = logging.getLogger(__name__)

# The hot path's statements: one indexed lookup from token hash to user to config.
_RESOLVE = (
    "SELECT u.id, c.id, c.ciphertext, c.is_active, c.key_hint, c.base_url, c.settings, t.id, u.disabled, "
    "t.expire_time, "
    # Whether any budget or policy applies (limits.lookup's rows): most users have none.
    "EXISTS (SELECT 1 FROM usage_limits l WHERE l.user_id = u.id AND l.token_id IN ('', t.id)) "
    "FROM tokens t JOIN users u ON u.id = t.user_id "
    "LEFT OUTER JOIN provider_configs c ON c.user_id = u.id AND c.provider = ? "
    "WHERE t.token_hash = ? AND t.revoke_time IS NULL"
    " AND (t.expire_time IS NULL OR t.expire_time > ?)"
)
_CONFIGS_PER_UPDATE = 16  # at most 16 statement texts, well inside SQLite's statement cache


@dataclass(frozen=True, slots=True)
class Settings:
    """Per-provider chat defaults (``None``: unset)."""

    default_model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"default_model": self.default_model}
        if self.temperature is not None:
            data["temperature"] = self.temperature
        if self.max_tokens is not None:
            data["max_tokens"] = self.max_tokens
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return _settings_from_json(text)


@functools.lru_cache(maxsize=1024)
def _settings_from_json(text: str) -> Settings:
    """Parsed once per distinct text (every resolve reads one; most are alike), shared: it is frozen."""
    data = json.loads(text or "{}")
    return Settings(str(data.get("default_model", "")), data.get("temperature"), data.get("max_tokens"))


@dataclass(frozen=True, slots=True)
class Record:
    """A stored configuration as callers may see it: never the key."""

    provider: str
    key_hint: str
    base_url: str
    settings: Settings
    is_active: bool
    create_time: int
    update_time: int
    last_used_time: int | None
    usage_count: int


@dataclass(frozen=True, slots=True)
class Resolved:
    """What ``resolve`` hands the LLM service."""

    user_id: str
    provider: str
    api_key: Secret
    base_url: str
    settings: Settings
    key_hint: str
    token_id: str = ""
    token_expire_time: int | None = None  # microseconds; None: never


@dataclass(frozen=True, slots=True)
class Draft:
    """A configuration to store: the key already encrypted for its row."""

    ciphertext: bytes
    key_id: str
    key_hint: str
    base_url: str
    settings: Settings


@dataclass(frozen=True, slots=True)
class Changes:
    """The fields an update sets: only those named in ``fields``."""

    fields: frozenset[str]
    base_url: str = ""
    is_active: bool = True
    settings: Settings = field(default_factory=Settings)


def _now() -> int:
    return time.time_ns() // 1000


def _record(row: Any) -> Record:
    return Record(
        provider=row.provider,
        key_hint=row.key_hint,
        base_url=row.base_url,
        settings=Settings.from_json(row.settings),
        is_active=bool(row.is_active),
        create_time=row.create_time,
        update_time=row.update_time,
        last_used_time=row.last_used_time,
        usage_count=row.usage_count,
    )


def _row(db: Database, user_id: str, provider: str, *, lock: bool = False) -> Any:
    model = db.tables.config
    query = model.select().where(model.user == user_id, model.provider == provider)
    return (db.lock_for_update(query) if lock else query).first()


def _missing(user_id: str, provider: str, action: str, request_id: str, db: Database) -> NotFound:
    audit.append(db, audit.Event(user_id, action, provider, "CONFIG_NOT_FOUND", request_id))
    return NotFound(
        f"no configuration for provider {provider!r}; store one with PutProviderConfig", provider=provider
    )


def put(db: Database, user_id: str, provider: str, draft: Draft, request_id: str) -> Record:
    """Create or replace (user, provider): new key, base_url and settings, active again."""
    model = db.tables.config
    now = _now()
    replaced = {
        model.ciphertext: draft.ciphertext,
        model.key_id: draft.key_id,
        model.format_version: FORMAT_VERSION,
        model.key_hint: draft.key_hint,
        model.base_url: draft.base_url,
        model.settings: draft.settings.to_json(),
        model.is_active: True,
        model.update_time: now,
    }
    created = {model.user: user_id, model.provider: provider, model.create_time: now, model.usage_count: 0}
    with db.write():
        model.insert({**created, **replaced}).on_conflict(
            conflict_target=[model.user, model.provider], update=replaced
        ).execute()
        detail = f"key_id={draft.key_id}"
        audit.append(db, audit.Event(user_id, "config.put", provider, "ok", request_id, detail))
        record_change(db, Kind.CONFIG_CHANGED, user_id, provider=provider)
        return _record(_row(db, user_id, provider))


def update(db: Database, user_id: str, provider: str, changes: Changes, request_id: str) -> Record:
    """Apply ``changes`` to an existing configuration; never touches the key."""
    model = db.tables.config
    with db.write():
        row = _row(db, user_id, provider, lock=True)
        if row is None:
            error = _missing(user_id, provider, "config.update", request_id, db)
        else:
            current = Settings.from_json(row.settings)
            values: dict[str, Any] = {"update_time": _now()}
            if "base_url" in changes.fields:
                values["base_url"] = changes.base_url
            if "is_active" in changes.fields:
                values["is_active"] = changes.is_active
            new = changes.settings
            merged = Settings(
                new.default_model
                if {"settings", "settings.default_model"} & changes.fields
                else current.default_model,
                new.temperature
                if {"settings", "settings.temperature"} & changes.fields
                else current.temperature,
                new.max_tokens
                if {"settings", "settings.max_tokens"} & changes.fields
                else current.max_tokens,
            )
            values["settings"] = merged.to_json()
            model.update(**values).where(model.id == row.id).execute()
            detail = "fields=" + ",".join(sorted(changes.fields))
            audit.append(db, audit.Event(user_id, "config.update", provider, "ok", request_id, detail))
            record_change(db, Kind.CONFIG_CHANGED, user_id, provider=provider)
            return _record(_row(db, user_id, provider))
    raise error


def get(db: Database, user_id: str, provider: str) -> Record:
    """The caller's configuration for one provider."""
    row = _row(db, user_id, provider)
    if row is None:
        raise NotFound(
            f"no configuration for provider {provider!r}; store one with PutProviderConfig", provider=provider
        )
    return _record(row)


def list_for(db: Database, user_id: str) -> list[Record]:
    """The caller's configurations, by provider id."""
    model = db.tables.config
    return [_record(r) for r in model.select().where(model.user == user_id).order_by(model.provider)]


def delete(db: Database, user_id: str, provider: str, request_id: str) -> None:
    """Remove the key and configuration."""
    model = db.tables.config
    with db.write():
        deleted = model.delete().where(model.user == user_id, model.provider == provider).execute()
        if not deleted:
            error = _missing(user_id, provider, "config.delete", request_id, db)
        else:
            audit.append(db, audit.Event(user_id, "config.delete", provider, "ok", request_id))
            record_change(db, Kind.CONFIG_CHANGED, user_id, provider=provider)
            return
    raise error


@dataclass(frozen=True, slots=True)
class Use:
    """What one resolve must write before it answers: its audit row, and the use of the
    configuration it decrypted (``config_id`` None on a refusal)."""

    event: audit.Event
    config_id: int | None = None
    when: int = 0


@dataclass(frozen=True, slots=True)
class Lookup:
    """A resolve's outcome, and what must be durable before it is given out (None: nothing)."""

    outcome: Resolved | RmllmError
    use: Use | None
    limited: bool = True  # False: no budget or policy applies (limits.lookup would find none)


def resolve(  # noqa: PLR0917 - the resolve's inputs, in Database.run's positional form
    db: Database, keyring: Keyring, token: str, provider: str, request_id: str, lease_seconds: int = 0
) -> Resolved:
    """Authenticate ``token``, then decrypt its user's key for ``provider`` (audited), in one
    transaction of its own (the CLI and tests; the server batches the writes, see ``lookup``).

    The audit row records the grant as a lease of ``lease_seconds`` (how long the
    caller will cache the key; 0: not cached) and the token id. A known user's
    refusal is audited and committed too, then raised. An unknown token is raised
    without a row of its own: the caller counts it (``vault_service.authguard``),
    so junk tokens cannot force a write each.
    """
    with db.write():
        found = lookup(db, keyring, token, provider, request_id, lease_seconds)
        if found.use is not None:
            record_uses(db, [found.use])
    if isinstance(found.outcome, RmllmError):
        raise found.outcome
    return found.outcome


def record_uses(db: Database, uses: Sequence[Use]) -> None:
    """Count the uses and append their audit rows, in order; call inside a write transaction.

    One UPDATE counts every configuration of the batch (each by its number of uses,
    its last use time the latest): a statement per use would hand the GIL back and
    forth with the event loop once per use."""
    counted: dict[int, tuple[int, int]] = {}  # config id -> (uses, latest use time)
    for use in uses:
        if use.config_id is not None:
            count, when = counted.get(use.config_id, (0, 0))
            counted[use.config_id] = (count + 1, max(when, use.when))
    items = sorted(counted.items())  # one row order for every writer (PostgreSQL row locks)
    for start in range(0, len(items), _CONFIGS_PER_UPDATE):
        chunk = items[start : start + _CONFIGS_PER_UPDATE]
        cases = " ".join(["WHEN ? THEN ?"] * len(chunk))
        marks = ", ".join(["?"] * len(chunk))
        db.execute(
            f"UPDATE provider_configs SET usage_count = usage_count + CASE id {cases} END, "  # noqa: S608 - only ? marks
            f"last_used_time = CASE id {cases} END WHERE id IN ({marks})",
            (
                *(v for config, (count, _) in chunk for v in (config, count)),
                *(v for config, (_, when) in chunk for v in (config, when)),
                *(config for config, _ in chunk),
            ),
        )
    audit.append_many(db, [use.event for use in uses])


def lookup(  # noqa: PLR0917 - the resolve's inputs, in Database.run's positional form
    db: Database, keyring: Keyring, token: str, provider: str, request_id: str, lease_seconds: int = 0
) -> Lookup:
    """The read half of a resolve: who, which configuration, the decrypted key or the refusal.

    Writes nothing: the outcome may be given out only once ``use`` is committed
    (``record_uses``, in the group commit), which keeps every decrypt audited.
    """

    def refuse(actor: str, error: RmllmError, detail: str = "") -> Lookup:
        return Lookup(
            error, Use(audit.Event(actor, "config.resolve", provider, error.reason, request_id, detail))
        )

    row = (
        db.execute(_RESOLVE, (provider, accounts.token_hash(token), _now())).fetchone()
        if accounts.plausible(token)
        else None
    )
    if row is None:
        # Not audited row by row: vault_service.authguard counts these (one row per interval).
        return Lookup(TokenInvalid(accounts.UNKNOWN_TOKEN_MESSAGE), None)
    user_id, config_id, blob, active, hint, base_url, settings, token_id, disabled, expires, limited = row
    if disabled:
        return refuse(user_id, UserDisabled(accounts.USER_DISABLED_MESSAGE))
    if config_id is None:
        return refuse(
            user_id,
            KeyNotConfigured(
                f"no key stored for provider {provider!r}; store one with PutProviderConfig",
                provider=provider,
            ),
        )
    if not active:
        return refuse(
            user_id,
            KeyNotConfigured(
                f"the configuration for provider {provider!r} is inactive; reactivate it with "
                "UpdateProviderConfig (is_active)",
                provider=provider,
            ),
        )
    try:
        key = keyring.decrypt(bytes(blob), user_id, provider)
    except DecryptionError as exc:
        metrics.decrypt_failure()
        log.error(
            "key decryption failed: %s",
            exc.why,
            extra={"key_id": exc.key_id, "provider": provider, "user_id": user_id, "event": "decrypt_failed"},
        )
        error = KeyDecryptionFailed(
            f"the stored key for provider {provider!r} cannot be decrypted (key id {exc.key_id}); "
            "the operator must restore the seed it was stored under",
            provider=provider,
            metadata={"key_id": exc.key_id},
        )
        return refuse(user_id, error, f"key_id={exc.key_id}")
    resolved = Resolved(
        user_id, provider, key, base_url, Settings.from_json(settings), hint, token_id, expires
    )
    lease = f"lease={lease_seconds}s token={token_id}"
    return Lookup(
        resolved,
        Use(audit.Event(user_id, "config.resolve", provider, "ok", request_id, lease), config_id, _now()),
        bool(limited),
    )
