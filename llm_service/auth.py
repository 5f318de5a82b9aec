"""Authorization of every LLMService call, in one interceptor that denies by default.

``AuthInterceptor`` wraps each LLMService handler once (health and reflection stay
open) with the check ``POLICY`` names for the method; a method missing from the
table is refused (PERMISSION_DENIED, METHOD_NOT_ALLOWED) before its handler runs.
Every method needs a user token (``rmllm_common.bearer.user_token``): a missing,
malformed or wrongly shaped one is refused as TOKEN_INVALID here, before any
vault call. The vault then judges the token, once per call:

* ``Access.USER``: the interceptor asks the vault (AuthenticateToken) before the
  handler runs, for a method whose handler would not ask the vault itself;
* ``Access.USER_VIA_VAULT``: the handler's own vault call (ResolveCredentials, or
  AuthenticateToken where it needs no key) judges it, so a call costs one round
  trip, not two. Every RPC today is of this kind (ListProviders asks the vault
  for the caller's model policy).

The check runs inside the wrapped handler, so the error interceptor (outermost)
turns its failures into the contract's status. The token is put in a context
variable for the servicer (``current_token``); each call runs in its own task.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

import grpc
from realmultillm.llm.v1 import llm_pb2

from llm_service.deadline import Clock, Deadline
from llm_service.vault_client import VaultClient
from rmllm_common.bearer import user_token
from rmllm_common.errors import MethodNotAllowed, RmllmError, TokenInvalid
from rmllm_common.secret import Secret
from rmllm_common.server import MethodInterceptor

log = logging.getLogger(__name__)
SERVICE_NAME: Final = llm_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name


class Access(Enum):
    """How a method's caller is judged."""

    USER = "user"
    USER_VIA_VAULT = "user, by the handler's vault call"


POLICY: Final[dict[str, Access]] = {
    f"/{SERVICE_NAME}/{name}": access
    for name, access in (
        ("Chat", Access.USER_VIA_VAULT),
        ("StreamChat", Access.USER_VIA_VAULT),
        ("TestKey", Access.USER_VIA_VAULT),
        ("ListProviders", Access.USER_VIA_VAULT),  # the handler asks who, for the model policy
        ("ListModels", Access.USER_VIA_VAULT),
    )
}

_current_token: ContextVar[Secret | None] = ContextVar("llm_current_token", default=None)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]


def current_token() -> Secret:
    """The user token this call was admitted with (TOKEN_INVALID outside an admitted call)."""
    token = _current_token.get()
    if token is None:
        raise TokenInvalid("this call carries no admitted user token")
    return token


class AuthInterceptor(MethodInterceptor):
    """Admits every LLMService call by ``POLICY`` before the servicer sees it."""

    def __init__(self, vault: VaultClient, clock: Clock) -> None:
        super().__init__()
        self._vault = vault
        self._clock = clock

    async def _admit(self, method: str, context: Context) -> None:
        try:
            access = POLICY.get(method)
            if access is None:
                raise MethodNotAllowed("this method is not open to any caller")
            token = user_token(context.invocation_metadata())
            if access is Access.USER:
                await self._vault.authenticate(token, Deadline.after(context.time_remaining(), self._clock))
        except RmllmError as exc:
            log.info("call refused", extra={"method": method, "reason": exc.reason, "event": "auth_refused"})
            raise
        _current_token.set(token)

    def wrap(self, method: str, handler: Handler) -> Handler | None:
        """``handler`` behind the admission check for ``method``; built once per method."""
        admit = self._admit
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary

            async def admitted(request: Any, context: Context) -> Any:
                await admit(method, context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                admitted,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streaming: Any = handler.unary_stream

            async def admitted_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await admit(method, context)
                async for item in streaming(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                admitted_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return None  # LLMService has no client-streaming methods: anything else is not served
