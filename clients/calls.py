"""The request protos each client call sends, built from keyword arguments.

Shared by the sync and asyncio clients so both send exactly the same requests.
``update_request`` builds the ``update_mask`` from the keyword arguments actually
given: passing ``temperature=None`` names ``settings.temperature`` in the mask and
leaves it unset, which clears it; leaving an argument out leaves the field alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Literal, TypeAlias, TypeVar

from google.protobuf import field_mask_pb2
from realmultillm.llm.v1 import llm_pb2
from realmultillm.vault.v1 import vault_pb2

from clients.datatypes import (
    Message,
    ProviderSettings,
    Reasoning,
    ResponseFormat,
    Tool,
    ToolChoiceArg,
    apply_features,
    conversation,
)


class _Unset(Enum):
    UNSET = "unset"


UNSET: Literal[_Unset.UNSET] = _Unset.UNSET
"""Marks an ``update_config`` argument that was not given (the field stays as it is)."""

T = TypeVar("T")
Maybe: TypeAlias = T | Literal[_Unset.UNSET]


def chat_request(
    provider: str,
    prompt: str | Sequence[Message],
    *,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    tools: Sequence[Tool | Callable[..., Any]] = (),
    tool_choice: ToolChoiceArg | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: ResponseFormat | None = None,
    reasoning: Reasoning | None = None,
) -> llm_pb2.ChatRequest:
    """A Chat request; unset optional values are left unset (the server's defaults apply)."""
    request = llm_pb2.ChatRequest(
        provider=provider, model=model or "", messages=conversation(prompt, system), stop=list(stop)
    )
    if temperature is not None:
        request.temperature = temperature
    if max_tokens is not None:
        request.max_tokens = max_tokens
    if top_p is not None:
        request.top_p = top_p
    return apply_features(
        request,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel_tool_calls,
        response_format=response_format,
        reasoning=reasoning,
    )


def stream_request(chat: llm_pb2.ChatRequest) -> llm_pb2.StreamChatRequest:
    """The StreamChat twin of a Chat request (the two messages share every field number)."""
    return llm_pb2.StreamChatRequest.FromString(chat.SerializeToString())


def put_request(
    provider: str,
    api_key: str,
    *,
    base_url: str | None,
    default_model: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> vault_pb2.PutProviderConfigRequest:
    settings = ProviderSettings(default_model or "", temperature, max_tokens)
    return vault_pb2.PutProviderConfigRequest(
        provider=provider, api_key=api_key, base_url=base_url or "", settings=settings.to_proto()
    )


def update_request(
    provider: str,
    *,
    base_url: Maybe[str],
    is_active: Maybe[bool],
    default_model: Maybe[str],
    temperature: Maybe[float | None],
    max_tokens: Maybe[int | None],
) -> vault_pb2.UpdateProviderConfigRequest:
    """An UpdateProviderConfig request naming exactly the fields given."""
    config = vault_pb2.ProviderConfig(provider=provider)
    paths: list[str] = []
    if base_url is not UNSET:
        config.base_url = base_url
        paths.append("base_url")
    if is_active is not UNSET:
        config.is_active = is_active
        paths.append("is_active")
    if default_model is not UNSET:
        config.settings.default_model = default_model
        paths.append("settings.default_model")
    if temperature is not UNSET:
        if temperature is not None:
            config.settings.temperature = temperature
        paths.append("settings.temperature")
    if max_tokens is not UNSET:
        if max_tokens is not None:
            config.settings.max_tokens = max_tokens
        paths.append("settings.max_tokens")
    if not paths:
        raise ValueError(
            "update_config needs at least one of base_url, is_active, default_model, temperature, max_tokens"
        )
    return vault_pb2.UpdateProviderConfigRequest(
        config=config, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
