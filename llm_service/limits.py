"""Budgets and model policy, enforced before a provider is called.

The vault is the one source of both: ResolveCredentials and AuthenticateToken
return the caller's budgets (user and token, daily and monthly, each with the
spend recorded so far and when its period resets) and both model policies. So a
budget holds across LLM replicas and vault processes. ``CallerLimits.check``
refuses a model the user's or the token's policy does not allow
(PERMISSION_DENIED / MODEL_NOT_ALLOWED) and a call whose budget is used up
(RESOURCE_EXHAUSTED / BUDGET_EXCEEDED, with the budget, the spend and the reset
time in the metadata and RetryInfo until the reset). The spend it compares adds
this replica's own calls that are finished but not yet acknowledged by the vault
(``pending``, from the usage reporter), so a replica does not overshoot by what
it has not reported yet. What remains is the overshoot of calls already in
flight when the budget is reached: see docs/LEDGER.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rmllm_common.errors import BudgetExceeded, ModelNotAllowed
from rmllm_common.modelpolicy import ModelPolicy

_SCOPES = {1: "user", 2: "token"}
_PERIODS = {1: "daily", 2: "monthly"}


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget with the spend the vault had recorded when it answered."""

    scope: str  # "user" or "token"
    period: str  # "daily" or "monthly"
    limit_usd: float
    spent_usd: float
    reset_time: float  # epoch seconds (UTC)


@dataclass(frozen=True, slots=True)
class CallerLimits:
    """The budgets and policies that apply to one caller's token."""

    budgets: tuple[Budget, ...] = ()
    user_policy: ModelPolicy = field(default_factory=ModelPolicy)
    token_policy: ModelPolicy = field(default_factory=ModelPolicy)

    def allows(self, provider: str, model: str) -> bool:
        """Whether both policies let the caller use ``model`` of ``provider``."""
        return self.user_policy.allows(provider, model) and self.token_policy.allows(provider, model)

    def allows_provider(self, provider: str) -> bool:
        """Whether some model of ``provider`` may be allowed (ListProviders)."""
        return self.user_policy.allows_some(provider) and self.token_policy.allows_some(provider)

    def check(
        self,
        provider: str,
        model: str,
        pending: Callable[[str], float] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Refuse the call if a policy forbids the model or a budget is used up.

        ``pending(scope)`` is this replica's unacknowledged spend of the caller's
        ``"user"`` or ``"token"`` (the caller binds the ids).
        """
        if not self.allows(provider, model):
            which = "the token's" if not self.token_policy.allows(provider, model) else "your"
            raise ModelNotAllowed(
                f"{which} model policy does not allow {provider}/{model}; ask the operator, or pick "
                "another model",
                provider=provider,
                metadata={"model": model},
            )
        for budget in self.budgets:
            spent = budget.spent_usd + (pending(budget.scope) if pending else 0.0)
            if spent >= budget.limit_usd:
                wait = max(0.0, budget.reset_time - now())
                reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(budget.reset_time))
                raise BudgetExceeded(
                    f"the {budget.scope}'s {budget.period} budget of ${budget.limit_usd:.2f} is used up "
                    f"(${spent:.4f} spent); it resets at {reset}",
                    provider=provider,
                    metadata={
                        "scope": budget.scope,
                        "period": budget.period,
                        "budget_usd": f"{budget.limit_usd:.10g}",
                        "spent_usd": f"{spent:.10g}",
                        "reset_time": reset,
                    },
                    retry_after=math.ceil(wait),
                )


def _policy(reply: Any, name: str) -> ModelPolicy:
    if not reply.HasField(name):
        return ModelPolicy()
    message = getattr(reply, name)
    return ModelPolicy(tuple(message.allow), tuple(message.deny))


def from_reply(reply: Any) -> CallerLimits:
    """The limits in a ResolveCredentials or AuthenticateToken answer."""
    if not reply.budgets and not reply.HasField("user_policy") and not reply.HasField("token_policy"):
        return NO_LIMITS
    budgets = tuple(
        Budget(
            _SCOPES.get(b.scope, "user"),
            _PERIODS.get(b.period, "daily"),
            b.limit_usd,
            b.spent_usd,
            b.reset_time.seconds + b.reset_time.nanos / 1e9,
        )
        for b in reply.budgets
    )
    return CallerLimits(budgets, _policy(reply, "user_policy"), _policy(reply, "token_policy"))


NO_LIMITS = CallerLimits()
