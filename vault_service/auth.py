"""Authentication of every VaultService call, in one interceptor.

``AuthInterceptor`` wraps each VaultService handler once, of whatever kind (unary or
streaming, either way; health and reflection stay open), with a check driven by
``POLICY``: user RPCs need ``authorization: Bearer <user token>``, service RPCs
need the service credential, compared in constant time. A method missing from
the table is refused (deny by default). The check runs before the handler reads
anything, inside the wrapped handler, so the error interceptor (outermost) turns its
failures into the contract's status. The authenticated user is put in a context
variable for the servicer (``current_user``). Failed user authentications go to
the ``AuthGuard`` (limited per peer and token prefix, audited as counts).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar, Token
from enum import Enum
from typing import Any, Final

import grpc
from realmultillm.vault.v1 import vault_pb2

from rmllm_common.bearer import bearer_token
from rmllm_common.errors import MethodNotAllowed, PermissionDenied, RateLimited, TokenInvalid
from rmllm_common.secret import Secret
from rmllm_common.server import MethodInterceptor
from vault_service import metrics
from vault_service.accounts import Principal
from vault_service.authguard import AuthGuard

log = logging.getLogger(__name__)
SERVICE_NAME: Final = vault_pb2.DESCRIPTOR.services_by_name["VaultService"].full_name


class Access(Enum):
    """Who may call a method."""

    USER = "user"
    SERVICE = "service"


POLICY: Final[dict[str, Access]] = {
    f"/{SERVICE_NAME}/{name}": access
    for name, access in (
        ("PutProviderConfig", Access.USER),
        ("UpdateProviderConfig", Access.USER),
        ("GetProviderConfig", Access.USER),
        ("ListProviderConfigs", Access.USER),
        ("DeleteProviderConfig", Access.USER),
        ("ResolveCredentials", Access.SERVICE),
        ("AuthenticateToken", Access.SERVICE),
        ("GetUsageSummary", Access.USER),
        ("ListUsageRecords", Access.USER),
        ("ReportUsage", Access.SERVICE),
        ("WatchInvalidations", Access.SERVICE),
    )
}

_current_user: ContextVar[Principal | None] = ContextVar("vault_current_user", default=None)


def current_user() -> Principal:
    """The user this call authenticated as (user RPCs only)."""
    user = _current_user.get()
    if user is None:
        raise TokenInvalid("this call carries no authenticated user")
    return user


class AuthInterceptor(MethodInterceptor):
    """Authenticates every VaultService call before the servicer sees it."""

    def __init__(
        self,
        service_token: Secret,
        authenticate: Callable[[str], Awaitable[Principal | None]],
        guard: AuthGuard | None = None,
    ) -> None:
        super().__init__()
        self._service_token = service_token.reveal().encode()
        self._authenticate = authenticate
        self._guard = guard

    async def _check(self, access: Access | None, context: Any) -> Principal | None:
        try:
            token = bearer_token(context.invocation_metadata()).reveal()
        except TokenInvalid:
            if access is Access.USER and self._guard is not None:
                self._guard.failed("auth.user", "", context.peer())
            raise
        if access is Access.SERVICE:
            if not hmac.compare_digest(token.encode(), self._service_token):
                raise PermissionDenied(
                    "this RPC is for the LLM service only: it needs the service credential"
                )
            return None
        if access is Access.USER:
            # The peer only for user RPCs (the service's peer is the LLM service: never limited).
            peer = context.peer()
            if self._guard is not None:
                self._guard.check("auth.user", token, peer)
            user = await self._authenticate(token)
            if user is None:
                if self._guard is not None:
                    self._guard.failed("auth.user", token, peer)
                raise TokenInvalid("the token is unknown, revoked or expired; ask the operator for a new one")
            return user
        raise MethodNotAllowed("this method is not open to any caller")

    async def _enter(self, method: str, access: Access | None, context: Any) -> Token[Principal | None]:
        """Check the call's credentials; set the caller for the servicer (reset it after)."""
        try:
            principal = await self._check(access, context)
        except (TokenInvalid, PermissionDenied, RateLimited) as exc:
            metrics.auth_failure(exc.reason)
            log.info("call refused", extra={"method": method, "reason": exc.reason, "event": "auth_refused"})
            raise
        return _current_user.set(principal)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` behind the check for ``method``, whatever its kind; built once per method.

        Unary-response kinds (unary-unary, stream-unary) await the inner handler;
        streaming-response kinds (unary-stream, stream-stream) are async generators
        that check before their first message and forward every message after.
        The check runs before the request stream is read.
        """
        access = POLICY.get(method)
        serializers: Any = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        def unary_response(inner: Any) -> Any:
            async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                reset = await self._enter(method, access, context)
                try:
                    return await inner(request, context)
                finally:
                    _current_user.reset(reset)

            return authenticated

        def stream_response(inner: Any) -> Any:
            async def authenticated(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                reset = await self._enter(method, access, context)
                try:
                    async for item in inner(request, context):
                        yield item
                finally:
                    _current_user.reset(reset)

            return authenticated

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                stream_response(handler.stream_stream), **serializers
            )
        raise TypeError(f"{method}: a handler of no known kind")
