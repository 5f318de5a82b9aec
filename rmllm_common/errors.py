"""The one error hierarchy of both services, and its translation to gRPC status.

Every failure a caller can see is an ``RmllmError``: it carries its gRPC code, an
UPPER_SNAKE_CASE ``reason``, a message for people, ``metadata`` (``provider`` where
one is involved), and optionally a retry delay and field violations. Code raises
these; exactly one place (``to_status``, used by the server interceptor in
``rmllm_common.server``) turns them into a ``google.rpc.Status`` with exactly one
``ErrorInfo``, plus ``RetryInfo`` and ``BadRequest`` where they apply. Messages
must never contain a key, a token or the seed: build them from hints, not values.

``REASONS`` is the one list of the contract's reasons: each with its gRPC code and
the services that answer it. Every error class, every ``reason=`` a service passes,
the client's classes (``clients.errors``) and the list in ``llm.proto`` are checked
against it by tests (``tests/rmllm_common/test_error_contract.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "realmultillm"
Code = grpc.StatusCode
LLM, VAULT = "llm", "vault"


@dataclass(frozen=True, slots=True)
class Reason:
    """One ErrorInfo reason of the contract: its gRPC code, and who answers it over gRPC.

    ``services`` is empty for reasons only the operator commands (``rmllm-vault``) print.
    """

    code: grpc.StatusCode
    services: frozenset[str]


def _reason(code: grpc.StatusCode, *services: str) -> Reason:
    return Reason(code, frozenset(services))


# The one table of reasons. Add a row here first; the tests then name what else must follow.
REASONS: dict[str, Reason] = {
    "INVALID_REQUEST": _reason(Code.INVALID_ARGUMENT, LLM, VAULT),
    "UNKNOWN_PROVIDER": _reason(Code.INVALID_ARGUMENT, LLM, VAULT),
    "MALFORMED_REQUEST": _reason(Code.INVALID_ARGUMENT, LLM, VAULT),
    "TOKEN_INVALID": _reason(Code.UNAUTHENTICATED, LLM, VAULT),
    "USER_DISABLED": _reason(Code.UNAUTHENTICATED, LLM, VAULT),
    "SERVICE_CREDENTIAL_REQUIRED": _reason(Code.PERMISSION_DENIED, VAULT),
    "METHOD_NOT_ALLOWED": _reason(Code.PERMISSION_DENIED, LLM, VAULT),
    "MODEL_NOT_ALLOWED": _reason(Code.PERMISSION_DENIED, LLM),
    "CONFIG_NOT_FOUND": _reason(Code.NOT_FOUND, VAULT),
    "ALREADY_EXISTS": _reason(Code.ALREADY_EXISTS, VAULT),
    "FAILED_PRECONDITION": _reason(Code.FAILED_PRECONDITION, LLM, VAULT),
    "KEY_NOT_CONFIGURED": _reason(Code.FAILED_PRECONDITION, LLM, VAULT),
    "PROVIDER_KEY_INVALID": _reason(Code.FAILED_PRECONDITION, LLM),
    "CAPABILITY_UNSUPPORTED": _reason(Code.FAILED_PRECONDITION, LLM),
    "RATE_LIMITED": _reason(Code.RESOURCE_EXHAUSTED, LLM),
    "PROVIDER_RATE_LIMITED": _reason(Code.RESOURCE_EXHAUSTED, LLM),
    "PROVIDER_QUOTA_EXHAUSTED": _reason(Code.RESOURCE_EXHAUSTED, LLM),
    "UPSTREAM_RESPONSE_TOO_LARGE": _reason(Code.RESOURCE_EXHAUSTED, LLM),
    "BUDGET_EXCEEDED": _reason(Code.RESOURCE_EXHAUSTED, LLM),
    "UNAVAILABLE": _reason(Code.UNAVAILABLE),
    "PROVIDER_UNAVAILABLE": _reason(Code.UNAVAILABLE, LLM),
    "UPSTREAM_STREAM_TRUNCATED": _reason(Code.UNAVAILABLE, LLM),
    "VAULT_UNAVAILABLE": _reason(Code.UNAVAILABLE, LLM),
    "RATE_LIMITER_UNAVAILABLE": _reason(Code.UNAVAILABLE, LLM),
    "DATABASE_UNAVAILABLE": _reason(Code.UNAVAILABLE, VAULT),
    "DEADLINE_EXCEEDED": _reason(Code.DEADLINE_EXCEEDED, LLM),
    "INTERNAL": _reason(Code.INTERNAL, LLM, VAULT),
    "KEY_DECRYPTION_FAILED": _reason(Code.INTERNAL, LLM, VAULT),
    "UNIMPLEMENTED": _reason(Code.UNIMPLEMENTED, LLM, VAULT),
    "PROVIDER_ERROR": _reason(Code.UNKNOWN, LLM),
    # Operator commands only (rmllm-vault users/tokens).
    "USER_NOT_FOUND": _reason(Code.NOT_FOUND),
    "USER_EXISTS": _reason(Code.ALREADY_EXISTS),
    "TOKEN_NOT_FOUND": _reason(Code.NOT_FOUND),
}


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field: its path (``messages[2].role``) and what is wrong."""

    field: str
    description: str


class RmllmError(Exception):
    """Base of every error that reaches a caller as a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        provider: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        violations: Iterable[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        if provider:
            self.metadata["provider"] = provider
        self.retry_after = retry_after
        self.violations = tuple(violations)

    @property
    def provider(self) -> str | None:
        return self.metadata.get("provider")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"


class InvalidRequest(RmllmError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"


class UnknownProvider(InvalidRequest):
    reason = "UNKNOWN_PROVIDER"


class MalformedRequest(InvalidRequest):
    """The request bytes could not be decoded as the method's message."""

    reason = "MALFORMED_REQUEST"


class TokenInvalid(RmllmError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


class UserDisabled(TokenInvalid):
    """A valid, unrevoked token whose user the operator disabled (``rmllm-vault users enable``
    undoes it). Distinct from TOKEN_INVALID: the holder already knows the token is real."""

    reason = "USER_DISABLED"


class PermissionDenied(RmllmError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "SERVICE_CREDENTIAL_REQUIRED"


class ModelNotAllowed(PermissionDenied):
    """The caller's model policy (user or token) refuses this provider and model."""

    reason = "MODEL_NOT_ALLOWED"


class NotFound(RmllmError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "CONFIG_NOT_FOUND"


class AlreadyExists(RmllmError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(RmllmError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class KeyNotConfigured(FailedPrecondition):
    reason = "KEY_NOT_CONFIGURED"


class ProviderKeyInvalid(FailedPrecondition):
    reason = "PROVIDER_KEY_INVALID"


class CapabilityUnsupported(FailedPrecondition):
    """The chosen model lacks a feature the request needs (tools, vision, ...)."""

    reason = "CAPABILITY_UNSUPPORTED"


class ResourceExhausted(RmllmError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class RateLimited(ResourceExhausted):
    """Our own limit (per-user token bucket)."""

    reason = "RATE_LIMITED"


class ProviderRateLimited(ResourceExhausted):
    reason = "PROVIDER_RATE_LIMITED"


class BudgetExceeded(ResourceExhausted):
    """A user's or token's spend budget is used up until its period resets."""

    reason = "BUDGET_EXCEEDED"


class ProviderQuotaExhausted(ResourceExhausted):
    """The provider account has no quota or credit left: waiting does not help."""

    reason = "PROVIDER_QUOTA_EXHAUSTED"


class UpstreamResponseTooLarge(ResourceExhausted):
    """A provider's answer went past one of this server's limits (bytes, events, a line's
    length, a unary answer's characters); the upstream connection was closed."""

    reason = "UPSTREAM_RESPONSE_TOO_LARGE"


class Unavailable(RmllmError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class ProviderUnavailable(Unavailable):
    reason = "PROVIDER_UNAVAILABLE"


class UpstreamStreamTruncated(Unavailable):
    reason = "UPSTREAM_STREAM_TRUNCATED"


class VaultUnavailable(Unavailable):
    reason = "VAULT_UNAVAILABLE"


class DeadlineExceeded(RmllmError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Internal(RmllmError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


class KeyDecryptionFailed(Internal):
    reason = "KEY_DECRYPTION_FAILED"


class Unimplemented(RmllmError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class ProviderError(RmllmError):
    """The provider answered with an error we cannot classify more precisely."""

    code = grpc.StatusCode.UNKNOWN
    reason = "PROVIDER_ERROR"


class MethodNotAllowed(PermissionDenied):
    """A method missing from a service's access table: refused to every caller."""

    reason = "METHOD_NOT_ALLOWED"


class DatabaseUnavailable(Unavailable):
    """The vault's database cannot be reached or is locked; retrying shortly helps."""

    reason = "DATABASE_UNAVAILABLE"


class RateLimiterUnavailable(Unavailable):
    """The shared rate limiter (Redis) cannot be reached and fails closed; retrying shortly helps."""

    reason = "RATE_LIMITER_UNAVAILABLE"


def to_status(error: RmllmError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for an error: one ErrorInfo, then RetryInfo/BadRequest."""
    details: list[any_pb2.Any] = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if error.retry_after is not None:
        seconds = max(0.0, error.retry_after)
        whole = math.floor(seconds)
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
        )
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    code_value = error.code.value[0]
    assert code_pb2.Code.Name(code_value)  # every grpc.StatusCode has a google.rpc.Code twin
    return status_pb2.Status(code=code_value, message=error.message, details=details)


def invalid(field: str, description: str, *, provider: str | None = None) -> InvalidRequest:
    """An INVALID_ARGUMENT error for one field, its message naming the field."""
    return InvalidRequest(
        f"{field}: {description}",
        provider=provider,
        violations=[FieldViolation(field, description)],
    )
