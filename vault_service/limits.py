"""Budgets and model policies of users and tokens: set them, read them with the spend so far.

A row of ``usage_limits`` belongs to a user (``token_id`` empty: every token of
the user) or to one token (a "virtual key"). It holds a daily and a monthly
budget in US dollars (``NULL``: none) and the model policy's allow and deny
patterns (``rmllm_common.modelpolicy``). Periods are UTC days and UTC calendar
months. ``lookup`` is what ResolveCredentials and AuthenticateToken return to the
LLM service, which enforces: every budget with its spend so far (summed from the
``usage_daily`` rollups, so it costs the same however many calls were made) and
when its period resets, plus both policies. Every change is audited and, like
spend crossing a budget during ingestion (``note_spend``), recorded in the
change sequence so cached credentials are dropped.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final

from rmllm_common.errors import InvalidRequest, NotFound
from rmllm_common.modelpolicy import ModelPolicy, PolicyError, parse
from vault_service import audit
from vault_service.database import Database


def _change_sequence() -> Any:
    """``vault_service.invalidations`` (the change sequence of the scale-out work, #12), if present.

    Until it is, a budget or policy change is audited only.
    """
    try:
        return importlib.import_module("vault_service.invalidations")
    except ModuleNotFoundError:
        return None


_changes: Any = _change_sequence()

MAX_BUDGET_USD: Final = 1_000_000.0
OPERATOR: Final = "operator"
_LOOKUP = (
    "SELECT token_id, daily_usd, monthly_usd, allow_models, deny_models FROM usage_limits "
    "WHERE user_id = ? AND token_id IN ('', ?)"
)
_SPEND = (
    "SELECT SUM(CASE WHEN day = ? THEN cost_usd ELSE 0 END), SUM(cost_usd) FROM usage_daily "
    "WHERE user_id = ? AND day >= ?"
)


class Scope(Enum):
    """Who a budget or policy applies to (the proto's ``LimitScope``)."""

    USER = 1
    TOKEN = 2


class Period(Enum):
    """The period of a budget (the proto's ``BudgetPeriod``)."""

    DAILY = 1
    MONTHLY = 2


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget and its spend in the current period."""

    scope: Scope
    period: Period
    limit_usd: float
    spent_usd: float
    reset_time: datetime

    @property
    def exhausted(self) -> bool:
        return self.spent_usd >= self.limit_usd


@dataclass(frozen=True, slots=True)
class Limits:
    """What the LLM service enforces for one (user, token)."""

    budgets: tuple[Budget, ...] = ()
    user_policy: ModelPolicy = field(default_factory=ModelPolicy)
    token_policy: ModelPolicy = field(default_factory=ModelPolicy)


def check_budget(name: str, value: float | None) -> float | None:
    """A budget in dollars: a finite number from 0 to ``MAX_BUDGET_USD`` (None: no budget)."""
    if value is None:
        return None
    if not math.isfinite(value) or not 0 <= value <= MAX_BUDGET_USD:
        raise InvalidRequest(f"{name} must be a number of US dollars from 0 to {MAX_BUDGET_USD:,.0f}")
    return value


def period_bounds(now: datetime) -> tuple[str, str, datetime, datetime]:
    """Today, the first day of this month (``YYYY-MM-DD``), and when each period resets."""
    today = now.strftime("%Y-%m-%d")
    first = now.replace(day=1).strftime("%Y-%m-%d")
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    next_month = (midnight.replace(day=1) + timedelta(days=32)).replace(day=1)
    return today, first, midnight + timedelta(days=1), next_month


def _spend(db: Database, user_id: str, token_id: str, today: str, first: str) -> tuple[float, float]:
    sql, params = _SPEND, [today, user_id, first]
    if token_id:
        sql += " AND token_id = ?"
        params.append(token_id)
    daily, monthly = db.execute(sql, tuple(params)).fetchone()
    return float(daily or 0.0), float(monthly or 0.0)


def _policy(allow: str, deny: str) -> ModelPolicy:
    return ModelPolicy(tuple(p for p in allow.split(",") if p), tuple(p for p in deny.split(",") if p))


def lookup(db: Database, user_id: str, token_id: str, now: datetime | None = None) -> Limits:
    """The budgets (with spend) and policies that apply to calls with this token."""
    rows = db.execute(_LOOKUP, (user_id, token_id)).fetchall()
    if not rows:
        return Limits()
    when = now or datetime.now(UTC)
    today, first, day_reset, month_reset = period_bounds(when)
    budgets: list[Budget] = []
    policies = {Scope.USER: ModelPolicy(), Scope.TOKEN: ModelPolicy()}
    for row_token, daily, monthly, allow, deny in sorted(rows):
        scope = Scope.TOKEN if row_token else Scope.USER
        policies[scope] = _policy(allow, deny)
        if daily is None and monthly is None:
            continue
        spent_day, spent_month = _spend(db, user_id, row_token, today, first)
        if daily is not None:
            budgets.append(Budget(scope, Period.DAILY, float(daily), spent_day, day_reset))
        if monthly is not None:
            budgets.append(Budget(scope, Period.MONTHLY, float(monthly), spent_month, month_reset))
    return Limits(tuple(budgets), policies[Scope.USER], policies[Scope.TOKEN])


def _record_change(db: Database, kind: str, user_id: str, token_id: str) -> None:
    if _changes is not None:
        _changes.record_change(db, _changes.Kind[kind], user_id, token_id=token_id)


@dataclass(frozen=True, slots=True)
class Spend:
    """What one stored record added: whose, which UTC day (``YYYY-MM-DD``), how much."""

    user_id: str
    token_id: str
    day: str
    cost_usd: float


def note_spend(db: Database, stored: Sequence[Spend]) -> None:
    """Inside ingestion's transaction: record a change for every budget these records crossed."""
    spenders = {entry.user_id for entry in stored if entry.cost_usd > 0}
    if not spenders:
        return
    marks = ", ".join("?" for _ in spenders)
    rows = db.execute(
        "SELECT user_id, token_id, daily_usd, monthly_usd FROM usage_limits "  # noqa: S608 - only ? marks
        f"WHERE user_id IN ({marks}) AND (daily_usd IS NOT NULL OR monthly_usd IS NOT NULL)",
        tuple(sorted(spenders)),
    ).fetchall()
    if not rows:
        return
    today, first, _, _ = period_bounds(datetime.now(UTC))
    for user_id, token_id, daily, monthly in rows:
        mine = [e for e in stored if e.user_id == user_id and (not token_id or e.token_id == token_id)]
        added_day = sum(e.cost_usd for e in mine if e.day == today)
        added_month = sum(e.cost_usd for e in mine if first <= e.day <= today)
        if not added_month:
            continue
        spent_day, spent_month = _spend(db, user_id, token_id, today, first)
        crossed = (daily is not None and spent_day - added_day < daily <= spent_day) or (
            monthly is not None and spent_month - added_month < monthly <= spent_month
        )
        if crossed:
            _record_change(db, "BUDGET_CHANGED", user_id, token_id)


# Operator changes.


@dataclass(frozen=True, slots=True)
class Target:
    """Whose limits an operator command changes: a user, or one token of a user."""

    user_id: str
    token_id: str
    label: str


def user_target(db: Database, name: str) -> Target:
    """The limits of a user, by name."""
    row = db.tables.user.get_or_none(db.tables.user.name == name)
    if row is None:
        raise NotFound(f"no user named {name!r}", reason="USER_NOT_FOUND")
    return Target(str(row.id), "", f"user {name}")


def token_target(db: Database, token_id: str) -> Target:
    """The limits of one token, by its id (``tok_...``)."""
    row = db.tables.token.get_or_none(db.tables.token.id == token_id)
    if row is None:
        raise NotFound(f"no token with id {token_id!r}", reason="TOKEN_NOT_FOUND")
    return Target(str(row.user_id), token_id, f"token {token_id}")


def _row(db: Database, target: Target) -> Any:
    model = db.tables.usage_limits
    query = model.select().where(model.user_id == target.user_id, model.token_id == target.token_id)
    return db.lock_for_update(query).first()


def _upsert(db: Database, target: Target, values: dict[str, Any]) -> None:
    model = db.tables.usage_limits
    values = {**values, "update_time": time.time_ns() // 1000}
    if _row(db, target) is None:
        model.insert(user_id=target.user_id, token_id=target.token_id, **values).execute()
    else:
        model.update(**values).where(
            model.user_id == target.user_id, model.token_id == target.token_id
        ).execute()


def set_budget(
    db: Database, target: Target, *, daily: float | None, monthly: float | None, clear: bool = False
) -> Limits:
    """Set (or with ``clear``, remove) a target's budgets; returns its limits after the change."""
    values: dict[str, Any] = {}
    if clear:
        values = {"daily_usd": None, "monthly_usd": None}
    if daily is not None:
        values["daily_usd"] = check_budget("--daily-usd", daily)
    if monthly is not None:
        values["monthly_usd"] = check_budget("--monthly-usd", monthly)
    if not values:
        raise InvalidRequest("give --daily-usd, --monthly-usd or --clear")
    with db.write():
        _upsert(db, target, values)
        detail = " ".join(f"{k}={v}" for k, v in sorted(values.items()))
        audit.append(db, audit.Event(OPERATOR, "limits.budget", "", "ok", "-", f"{target.label} {detail}"))
        _record_change(db, "BUDGET_CHANGED", target.user_id, target.token_id)
    return lookup(db, target.user_id, target.token_id)


def set_policy(db: Database, target: Target, *, allow: str | None, deny: str | None) -> ModelPolicy:
    """Replace a target's allow and/or deny patterns; returns its policy after the change."""
    values: dict[str, Any] = {}
    try:
        if allow is not None:
            values["allow_models"] = ",".join(parse(allow))
        if deny is not None:
            values["deny_models"] = ",".join(parse(deny))
    except PolicyError as exc:
        raise InvalidRequest(str(exc)) from exc
    if not values:
        raise InvalidRequest("give --allow and/or --deny (an empty list removes the patterns)")
    with db.write():
        _upsert(db, target, values)
        detail = " ".join(f"{k}={v}" for k, v in sorted(values.items()))
        audit.append(db, audit.Event(OPERATOR, "limits.policy", "", "ok", "-", f"{target.label} {detail}"))
        _record_change(db, "POLICY_CHANGED", target.user_id, target.token_id)
        row = _row(db, target)
    return _policy(row.allow_models, row.deny_models)
