"""Users and their tokens: create, list, disable, enable, delete, revoke, and authenticate.

A user token is ``rmk_`` followed by 43 base64url characters (256 random bits).
It is shown once, when made; the database keeps only its SHA-256 (a fast hash is
right for a high-entropy random token: there is nothing to brute-force), under a
unique index, so authenticating is one indexed lookup. A token has a public id
(``tok_…``) for listing and revoking. Revoked tokens authenticate as unknown; the
tokens of a disabled user as USER_DISABLED (their holder knows they are real).
Every user and token change is audited.

A token may carry an expiry (``tokens create NAME --expires-in 90d``): past it, the
token authenticates as unknown, exactly like a revoked one (``TOKEN_INVALID``).
The check is part of the authenticating query, so an expired token costs no more
than an unknown one. ``parse_duration`` reads the ``--expires-in`` forms.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

import peewee as pw

from rmllm_common import bearer
from rmllm_common.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound, UserDisabled
from rmllm_common.secret import Secret
from vault_service import audit
from vault_service.database import Database
from vault_service.invalidations import Kind, record_change

TOKEN_PREFIX: Final = bearer.USER_TOKEN_PREFIX
OPERATOR: Final = "operator"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_AUTHENTICATE = (
    "SELECT u.id, u.name, t.id, u.disabled FROM tokens t JOIN users u ON u.id = t.user_id "
    "WHERE t.token_hash = ? AND t.revoke_time IS NULL"
    " AND (t.expire_time IS NULL OR t.expire_time > ?)"
)
USER_DISABLED_MESSAGE: Final = (
    "the token's user is disabled; ask the operator to enable it (rmllm-vault users enable NAME)"
)
UNKNOWN_TOKEN_MESSAGE: Final = "the user token is unknown, revoked or expired"  # noqa: S105
_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhdw])$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_EXPIRY_SECONDS: Final = 10 * 366 * 86400


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user."""

    user_id: str
    user_name: str
    # Which of the user's tokens authenticated (not part of the user's identity).
    token_id: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user, as ``users list`` shows it."""

    user_id: str
    name: str
    disabled: bool
    create_time: int
    active_tokens: int


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token, as ``tokens list`` shows it: never the token itself."""

    token_id: str
    user_name: str
    create_time: int
    revoke_time: int | None
    expire_time: int | None = None

    def expired(self, now: int) -> bool:
        """Whether the token's expiry (if any) has passed at ``now`` (microseconds)."""
        return self.expire_time is not None and self.expire_time <= now


def new_token() -> Secret:
    """A fresh user token: the prefix and 256 random bits."""
    return bearer.new_user_token()


def token_hash(token: str) -> str:
    """What the database stores for a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> int:
    return time.time_ns() // 1000


def parse_duration(text: str) -> int:
    """Seconds in ``90d``, ``12h``, ``30m``, ``2w`` or ``3600s`` (at most ten years)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise InvalidRequest(
            "--expires-in takes a whole number and a unit s, m, h, d or w (for example 90d), "
            f"not {text[:20]!r}"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_EXPIRY_SECONDS:
        raise InvalidRequest("--expires-in is at most ten years (3660d)")
    return seconds


def _user_by_name(db: Database, name: str) -> Any:
    user = db.tables.user.get_or_none(db.tables.user.name == name)
    if user is None:
        raise NotFound(f"no user named {name!r}", reason="USER_NOT_FOUND")
    return user


def _issue(db: Database, user: Any, expires_in: int | None = None) -> tuple[str, Secret]:
    token = new_token()
    token_id = "tok_" + secrets.token_hex(6)
    now = _now()
    expire_time = None if expires_in is None else now + expires_in * 1_000_000
    db.tables.token.insert(
        id=token_id,
        user=user.id,
        token_hash=token_hash(token.reveal()),
        create_time=now,
        expire_time=expire_time,
    ).execute()
    detail = f"{user.id} {token_id}" + ("" if expire_time is None else f" expire_time={expire_time}")
    audit.append(db, audit.Event(actor=OPERATOR, action="token.create", detail=detail))
    return token_id, token


def create_user(db: Database, name: str, expires_in: int | None = None) -> tuple[Principal, str, Secret]:
    """A new user and its first token: ``(principal, token_id, token)``.

    ``expires_in`` (seconds) gives the token an expiry; None: it never expires.
    """
    if not _NAME.match(name):
        raise InvalidRequest(
            "user names are 1 to 64 characters: letters, digits and . _ @ -, starting with a letter or digit"
        )
    user_id = "usr_" + secrets.token_hex(8)
    try:
        with db.write():
            db.tables.user.insert(id=user_id, name=name, disabled=False, create_time=_now()).execute()
            audit.append(db, audit.Event(actor=OPERATOR, action="user.create", detail=f"{user_id} {name}"))
            token_id, token = _issue(db, db.tables.user.get_by_id(user_id), expires_in)
    except pw.IntegrityError as exc:
        raise AlreadyExists(f"a user named {name!r} already exists", reason="USER_EXISTS") from exc
    return Principal(user_id, name, token_id), token_id, token


def list_users(db: Database) -> list[UserInfo]:
    """Every user, by name, with its count of usable tokens."""
    user, token = db.tables.user, db.tables.token
    usable = token.revoke_time.is_null() & (token.expire_time.is_null() | (token.expire_time > _now()))
    active = pw.fn.COUNT(token.id).filter(usable)
    query = (
        user.select(user, active.alias("active"))
        .join(token, pw.JOIN.LEFT_OUTER)
        .group_by(user.id)
        .order_by(user.name)
    )
    return [UserInfo(u.id, u.name, bool(u.disabled), u.create_time, int(u.active or 0)) for u in query]


def disable_user(db: Database, name: str) -> str:
    """Disable a user: its tokens stop working. Returns the user id."""
    with db.write():
        user = _user_by_name(db, name)
        db.tables.user.update(disabled=True).where(db.tables.user.id == user.id).execute()
        audit.append(db, audit.Event(actor=OPERATOR, action="user.disable", detail=f"{user.id} {name}"))
        record_change(db, Kind.USER_CHANGED, str(user.id))
    return str(user.id)


def enable_user(db: Database, name: str) -> str:
    """Enable a disabled user again: its unrevoked tokens work again. Returns the user id."""
    with db.write():
        user = _user_by_name(db, name)
        db.tables.user.update(disabled=False).where(db.tables.user.id == user.id).execute()
        audit.append(db, audit.Event(actor=OPERATOR, action="user.enable", detail=f"{user.id} {name}"))
        record_change(db, Kind.USER_CHANGED, str(user.id))
    return str(user.id)


@dataclass(frozen=True, slots=True)
class Deleted:
    """What ``delete_user`` removed."""

    user_id: str
    configs: int
    tokens: int


def delete_user(db: Database, name: str) -> Deleted:
    """Delete a user with its provider configs (their encrypted keys), tokens, budgets and
    model policy, in one audited transaction. The audit rows and the usage ledger about
    the user stay: they are history."""
    tables = db.tables
    with db.write():
        user = _user_by_name(db, name)
        configs = tables.config.delete().where(tables.config.user == user.id).execute()
        tables.usage_limits.delete().where(tables.usage_limits.user_id == user.id).execute()
        tokens = tables.token.delete().where(tables.token.user == user.id).execute()
        tables.user.delete().where(tables.user.id == user.id).execute()
        audit.append(
            db,
            audit.Event(
                actor=OPERATOR,
                action="user.delete",
                detail=f"{user.id} {name} configs={configs} tokens={tokens}",
            ),
        )
        record_change(db, Kind.USER_CHANGED, str(user.id))  # cached credentials must go at once
    return Deleted(str(user.id), int(configs), int(tokens))


def create_token(db: Database, name: str, expires_in: int | None = None) -> tuple[str, Secret]:
    """Another token for an enabled user: ``(token_id, token)``, expiring after ``expires_in`` s."""
    with db.write():
        user = _user_by_name(db, name)
        if user.disabled:
            raise FailedPrecondition(f"user {name!r} is disabled")
        return _issue(db, user, expires_in)


def list_tokens(db: Database, name: str | None = None) -> list[TokenInfo]:
    """Tokens (of one user, or all), oldest first."""
    user, token = db.tables.user, db.tables.token
    query = token.select(token, user.name).join(user).order_by(token.create_time, token.id)
    if name is not None:
        query = query.where(user.id == _user_by_name(db, name).id)
    return [TokenInfo(t.id, t.user.name, t.create_time, t.revoke_time, t.expire_time) for t in query]


def revoke_token(db: Database, token_id: str) -> None:
    """Revoke a token by id; revoking twice is a no-op that is still audited."""
    model = db.tables.token
    with db.write():
        row = model.get_or_none(model.id == token_id)
        if row is None:
            raise NotFound(f"no token with id {token_id!r}", reason="TOKEN_NOT_FOUND")
        if row.revoke_time is None:
            model.update(revoke_time=_now()).where(model.id == token_id).execute()
            record_change(db, Kind.TOKEN_REVOKED, str(row.user_id), token_id=token_id)
        audit.append(
            db, audit.Event(actor=OPERATOR, action="token.revoke", detail=f"{row.user_id} {token_id}")
        )


def plausible(token: str) -> bool:
    """Whether ``token`` has the shape of a user token (checked before any lookup)."""
    return bearer.is_user_token(token)


def authenticate(db: Database, token: str) -> Principal | None:
    """The user a token belongs to, or None if it is unknown, revoked or expired; a token
    of a disabled user raises ``UserDisabled``."""
    if not plausible(token):
        return None
    row = db.execute(_AUTHENTICATE, (token_hash(token), _now())).fetchone()
    if row is None:
        return None
    if row[3]:
        raise UserDisabled(USER_DISABLED_MESSAGE)
    return Principal(row[0], row[1], row[2])
