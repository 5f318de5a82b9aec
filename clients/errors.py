"""Typed exceptions for the client: one hierarchy, each class carrying its gRPC code.

Following google-api-core's pattern, every failed call raises an ``RmllmClientError``
built at the client edge by ``from_grpc_error``: the class comes from the
``google.rpc.ErrorInfo`` reason the services put in the rich status (for example
``KEY_NOT_CONFIGURED`` -> ``KeyNotConfigured``), and an unknown or missing reason
falls back to the class of the gRPC code (``UNAVAILABLE`` -> ``Unavailable``). Each
class registers itself when it is defined: under its ``reason``, and, for the one
class per gRPC code marked ``code_class=True``, under its code. Each
error exposes ``code``, ``reason``, ``message``, ``metadata`` (``provider`` where one
is involved), ``retry_after`` (seconds, from ``RetryInfo``) and ``field_violations``
(from ``BadRequest``), plus the ``service`` and ``target`` the call went to and the
server's ``request_id`` (quote it to the operator; it is in the message too)::

    try:
        client.chat("openai", "hi")
    except KeyNotConfigured as err:
        print(f"store a key first: rmllm keys set {err.provider}")
    except RateLimited as err:
        time.sleep(err.retry_after or 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field named by the server: its path and what is wrong."""

    field: str
    description: str


_BY_CODE: dict[grpc.StatusCode, type[RmllmClientError]] = {}
_BY_REASON: dict[str, type[RmllmClientError]] = {}


class RmllmClientError(Exception):
    """Base of every error a RealMultiLLM call raises."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = "UNKNOWN"

    def __init_subclass__(cls, *, code_class: bool = False, **kwargs: Any) -> None:
        """Register the class under its reason (and its code, for a code's own class)."""
        super().__init_subclass__(**kwargs)
        if "reason" in cls.__dict__:
            _BY_REASON[cls.reason] = cls
        if code_class:
            _BY_CODE[cls.code] = cls

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        service: str = "",
        target: str = "",
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if reason:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after
        self.field_violations = field_violations
        self.service = service
        self.target = target
        self.request_id = request_id

    @property
    def provider(self) -> str | None:
        """The provider the error is about, when the server named one."""
        return self.metadata.get("provider")

    def __str__(self) -> str:
        text = f"{self.code.name} ({self.reason}): {self.message}"
        return f"{text} [request id {self.request_id}]" if self.request_id else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message!r})"


class InvalidRequest(RmllmClientError, code_class=True):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"


class UnknownProvider(InvalidRequest):
    reason = "UNKNOWN_PROVIDER"


class MalformedRequest(InvalidRequest):
    """The request's bytes could not be decoded (a client built from other protos)."""

    reason = "MALFORMED_REQUEST"


class Unauthenticated(RmllmClientError, code_class=True):
    """The token is missing, unknown, revoked or expired (TOKEN_INVALID)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


class UserDisabled(Unauthenticated):
    """The token is real, but the operator disabled its user (USER_DISABLED)."""

    reason = "USER_DISABLED"


class PermissionDenied(RmllmClientError, code_class=True):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ServiceCredentialRequired(PermissionDenied):
    reason = "SERVICE_CREDENTIAL_REQUIRED"


class MethodNotAllowed(PermissionDenied):
    """The method is not open to any caller."""

    reason = "METHOD_NOT_ALLOWED"


class ModelNotAllowed(PermissionDenied):
    """The caller's model policy does not allow this provider and model."""

    reason = "MODEL_NOT_ALLOWED"


class NotFound(RmllmClientError, code_class=True):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class ConfigNotFound(NotFound):
    """No configuration is stored for that provider."""

    reason = "CONFIG_NOT_FOUND"


class AlreadyExists(RmllmClientError, code_class=True):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(RmllmClientError, code_class=True):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class KeyNotConfigured(FailedPrecondition):
    """No (active) key is stored for the provider: store one first."""

    reason = "KEY_NOT_CONFIGURED"


class ProviderKeyInvalid(FailedPrecondition):
    """The provider rejected the stored key (401/403)."""

    reason = "PROVIDER_KEY_INVALID"


class CapabilityUnsupported(FailedPrecondition):
    """The chosen model lacks a feature the request needs (``metadata`` names the
    ``field`` and the ``model``): pick a model whose capabilities include it."""

    reason = "CAPABILITY_UNSUPPORTED"


class ResourceExhausted(RmllmClientError, code_class=True):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class RateLimited(ResourceExhausted):
    """The gateway's own per-user limit; ``retry_after`` says how long to wait."""

    reason = "RATE_LIMITED"


class ProviderRateLimited(ResourceExhausted):
    """The provider answered 429; ``retry_after`` says how long to wait."""

    reason = "PROVIDER_RATE_LIMITED"


class BudgetExceeded(ResourceExhausted):
    """The user's or token's spend budget is used up; ``metadata`` has the budget, spend and reset time."""

    reason = "BUDGET_EXCEEDED"


class ProviderQuotaExhausted(ResourceExhausted):
    """The provider account has no quota or credit left: waiting does not help."""

    reason = "PROVIDER_QUOTA_EXHAUSTED"


class UpstreamResponseTooLarge(ResourceExhausted):
    """The provider's answer went past one of the gateway's limits; retrying will not help
    (for a long answer use streaming)."""

    reason = "UPSTREAM_RESPONSE_TOO_LARGE"


class Unavailable(RmllmClientError, code_class=True):
    """The service (or what it depends on) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class VaultUnavailable(Unavailable):
    reason = "VAULT_UNAVAILABLE"


class DatabaseUnavailable(Unavailable):
    """The vault's database is unavailable; retrying shortly helps."""

    reason = "DATABASE_UNAVAILABLE"


class RateLimiterUnavailable(Unavailable):
    """The LLM service's shared rate limiter is down and fails closed; retrying shortly helps."""

    reason = "RATE_LIMITER_UNAVAILABLE"


class ProviderUnavailable(Unavailable):
    reason = "PROVIDER_UNAVAILABLE"


class UpstreamStreamTruncated(Unavailable):
    """The provider's stream was cut short; the text received so far is incomplete."""

    reason = "UPSTREAM_STREAM_TRUNCATED"


class DeadlineExceeded(RmllmClientError, code_class=True):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Cancelled(RmllmClientError, code_class=True):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class Internal(RmllmClientError, code_class=True):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


class KeyDecryptionFailed(Internal):
    """The vault cannot decrypt the stored key (its seed is missing or changed)."""

    reason = "KEY_DECRYPTION_FAILED"


class Unimplemented(RmllmClientError, code_class=True):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class ProviderError(RmllmClientError):
    """The provider failed in a way the gateway could not classify."""

    code = grpc.StatusCode.UNKNOWN
    reason = "PROVIDER_ERROR"


def error_class(code: grpc.StatusCode, reason: str) -> type[RmllmClientError]:
    """The class for a status: the reason's when its code agrees, else the code's."""
    by_reason = _BY_REASON.get(reason)
    if by_reason is not None and by_reason.code == code:
        return by_reason
    return _BY_CODE.get(code, RmllmClientError)


def _rich_status(error: Any) -> status_pb2.Status | None:
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except (ValueError, TypeError):  # malformed or inconsistent details: keep the plain status
        return None
    return status


def from_grpc_error(error: grpc.RpcError, *, service: str = "", target: str = "") -> RmllmClientError:
    """The typed exception for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code_method = getattr(error, "code", None)
    code: grpc.StatusCode = code_method() if callable(code_method) else grpc.StatusCode.UNKNOWN
    details_method = getattr(error, "details", None)
    message = (details_method() if callable(details_method) else None) or code.name.lower()
    reason = ""
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    violations: list[FieldViolation] = []
    status = _rich_status(error) if hasattr(error, "trailing_metadata") else None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    if not reason and code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in message:
        # gRPC's own size check, before any handler: say what to do about it.
        message = (
            f"the request is larger than the server accepts ({message}); send fewer or smaller "
            "images and documents (the operator sets the limit with RMLLM_MAX_REQUEST_BYTES)"
        )
    cls = error_class(code, reason or code.name)
    return cls(
        message,
        code=code,
        reason=reason or code.name,
        metadata=metadata,
        retry_after=retry_after,
        field_violations=tuple(violations),
        service=service,
        target=target,
        request_id=_request_id(error),
    )


def _request_id(error: Any) -> str:
    """The server's ``x-request-id`` from the trailing metadata ("" when absent)."""
    trailing = getattr(error, "trailing_metadata", None)
    try:
        pairs = trailing() if callable(trailing) else None
    except Exception:  # a call object without metadata
        return ""
    for key, value in pairs or ():
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""
