"""Authentication of every VaultService call, in one interceptor.

``AuthInterceptor`` wraps each VaultService handler once (health and reflection
stay open) with a check driven by ``POLICY``: user RPCs need ``authorization: Bearer
<user token>``, service RPCs need the service credential, compared in constant
time. A method missing from the table is refused (deny by default). The check runs
inside the wrapped handler, so the error interceptor (outermost) turns its
failures into the contract's status. The authenticated user is put in a context
variable for the servicer (``current_user``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from enum import Enum
from typing import Any, Final

import grpc
from realmultillm.vault.v1 import vault_pb2

from rmllm_common.bearer import bearer_token
from rmllm_common.errors import MethodNotAllowed, PermissionDenied, TokenInvalid
from rmllm_common.secret import Secret
from rmllm_common.server import is_standard_method
from vault_service.accounts import Principal

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


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every VaultService call before the servicer sees it."""

    def __init__(
        self, service_token: Secret, authenticate: Callable[[str], Awaitable[Principal | None]]
    ) -> None:
        self._service_token = service_token.reveal().encode()
        self._authenticate = authenticate
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def _check(self, access: Access | None, metadata: Any) -> Principal | None:
        token = bearer_token(metadata).reveal()
        if access is Access.SERVICE:
            if not hmac.compare_digest(token.encode(), self._service_token):
                raise PermissionDenied(
                    "this RPC is for the LLM service only: it needs the service credential"
                )
            return None
        if access is Access.USER:
            user = await self._authenticate(token)
            if user is None:
                raise TokenInvalid("the token is unknown or revoked; ask the operator for a new one")
            return user
        raise MethodNotAllowed("this method is not open to any caller")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_standard_method(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _admit(self, method: str, access: Access | None, context: Any) -> Principal | None:
        try:
            return await self._check(access, context.invocation_metadata())
        except (TokenInvalid, PermissionDenied) as exc:
            log.info("call refused", extra={"method": method, "reason": exc.reason, "event": "auth_refused"})
            raise

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` behind the check for ``method``, for each of the four call kinds; built once.

        Each call runs in a task of its own, so the authenticated user set for a
        streaming call stays with that call; unary calls reset it on the way out.
        """
        access = POLICY.get(method)
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary

            async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                reset = _current_user.set(await self._admit(method, access, context))
                try:
                    return await unary(request, context)
                finally:
                    _current_user.reset(reset)

            return grpc.unary_unary_rpc_method_handler(authenticated, **codec)
        if handler.unary_stream is not None:
            server_streaming: Any = handler.unary_stream

            async def authenticated_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                _current_user.set(await self._admit(method, access, context))
                async for item in server_streaming(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(authenticated_stream, **codec)
        if handler.stream_unary is not None:
            client_streaming: Any = handler.stream_unary

            async def authenticated_upload(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                _current_user.set(await self._admit(method, access, context))
                return await client_streaming(requests, context)

            return grpc.stream_unary_rpc_method_handler(authenticated_upload, **codec)
        bidi: Any = handler.stream_stream

        async def authenticated_bidi(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            _current_user.set(await self._admit(method, access, context))
            async for item in bidi(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(authenticated_bidi, **codec)
