"""Request validation and limits: every bad field becomes one clear INVALID_ARGUMENT.

``validate_chat`` checks a Chat/StreamChat request against the documented limits
and returns it normalised (``ChatInput``): 1 to 1,000 messages, each with a role
and content of at most 1 MiB (UTF-8; not empty unless the message has parts or
tool calls), 4 MiB of text in all; parts, tools, tool calls and results,
response format and reasoning as ``llm_service.features`` checks them; temperature 0 to 2,
top_p 0 to 1, max_tokens 1 to 1,000,000; at most 4 stop sequences of 1 to 256
characters; a model id of at most 200 printable characters without spaces. All
violations of one request are reported together in one BadRequest (one ErrorInfo,
INVALID_REQUEST); an unknown provider is UNKNOWN_PROVIDER on its own. The caller's
stored settings are applied afterwards by ``ChatInput.params``. TestKey's key and
base URL are checked by ``check_api_key`` and ``check_base_url``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llm_service.adapters.base import (
    ChatParams,
    Message,
    Role,
)
from llm_service.capabilities import check_capabilities, refused_params
from llm_service.features import (
    FeatureLimits,
    check_message_extras,
    check_parts,
    check_reasoning,
    check_response_format,
    check_tool_calls,
    check_tools,
)
from rmllm_common import urls
from rmllm_common.errors import FieldViolation, InvalidRequest
from rmllm_common.registry import ProviderSpec, Registry

MAX_MESSAGES = 1000
MAX_CONTENT_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 4 * 1024 * 1024
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_MODEL_CHARS = 200
MAX_TOKENS = 1_000_000
MAX_API_KEY_BYTES = 4096
_ROLES: dict[int, Role] = {1: "system", 2: "user", 3: "assistant", 4: "tool"}


def _utf8_length(text: str) -> int:
    # A str of n code points takes at most 4n bytes: encode only when that could matter.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _printable_word(text: str) -> bool:
    return text.isprintable() and not any(c.isspace() for c in text)


@dataclass(frozen=True, slots=True)
class ChatInput:
    """A valid chat request: its provider, and its parameters as the caller sent them.

    In ``request`` the fields the caller left unset are still unset (model "",
    temperature and max_tokens None); ``params`` fills them, once, for the adapter.
    """

    spec: ProviderSpec
    request: ChatParams

    def params(
        self, default_model: str = "", temperature: float | None = None, max_tokens: int | None = None
    ) -> ChatParams:
        """Request fields win over the caller's settings, which win over the registry's defaults.

        A stored temperature is not applied where the request cannot carry one
        (``capabilities.refused_params``). Raises ``CapabilityUnsupported`` when the
        chosen model lacks a feature the request needs (see ``llm_service.capabilities``).
        """
        request = self.request
        params = ChatParams(  # dataclasses.replace, spelled out: it costs more than the rest of this
            request.model or default_model or self.spec.default_model,
            request.messages,
            request.temperature if request.temperature is not None else temperature,
            request.max_tokens or max_tokens or self.spec.default_max_tokens,
            request.top_p,
            request.stop,
            request.tools,
            request.tool_choice,
            request.parallel_tool_calls,
            request.response_format,
            request.reasoning,
        )
        if (  # a stored temperature is a default, not a request: not applied where refused
            request.temperature is None
            and params.temperature is not None
            and "temperature" in refused_params(self.spec, params)
        ):
            params = dataclasses.replace(params, temperature=None)
        check_capabilities(self.spec, params)
        return params


def raise_violations(violations: list[FieldViolation], provider: str | None = None) -> None:
    """Raise one INVALID_REQUEST carrying every violation (no-op when there is none)."""
    if not violations:
        return
    first = violations[0]
    more = f" (and {len(violations) - 1} more; see the BadRequest details)" if len(violations) > 1 else ""
    raise InvalidRequest(
        f"{first.field}: {first.description}{more}", provider=provider, violations=violations
    )


def _check_messages(request: Any, bad: list[FieldViolation], limits: FeatureLimits) -> tuple[Message, ...]:
    count = len(request.messages)
    if count == 0:
        bad.append(FieldViolation("messages", "at least one message is required"))
        return ()
    if count > MAX_MESSAGES:
        bad.append(FieldViolation("messages", f"at most {MAX_MESSAGES} messages, got {count}"))
        return ()
    messages: list[Message] = []
    seen_calls: dict[str, str] = {}
    total = 0
    for index, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        content = message.content
        if (
            role is not None
            and role != "tool"
            and content
            and not message.parts
            and not message.tool_calls
            and not message.tool_call_id
            and not message.provider_state
        ):  # text alone, nearly every message: only its size to check
            size = _utf8_length(content)
            total += size
            if size > MAX_CONTENT_BYTES:
                bad.append(
                    FieldViolation(
                        f"messages[{index}].content", f"at most {MAX_CONTENT_BYTES} bytes, got {size}"
                    )
                )
            messages.append(Message(role, content))
            continue
        where = f"messages[{index}]"
        if role is None:
            bad.append(
                FieldViolation(f"{where}.role", "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL")
            )
        size = _utf8_length(content)
        for part in message.parts:
            if part.WhichOneof("part") == "text":
                size += _utf8_length(part.text)
        total += size
        parts = check_parts(message, where, role or "", limits, bad)
        calls = check_tool_calls(message, where, role or "", seen_calls, bad)
        call_id, state = check_message_extras(message, where, role or "", seen_calls, bad)
        if size == 0 and not message.parts and not message.tool_calls:
            bad.append(FieldViolation(f"{where}.content", "must not be empty"))
        elif size > MAX_CONTENT_BYTES:
            bad.append(FieldViolation(f"{where}.content", f"at most {MAX_CONTENT_BYTES} bytes, got {size}"))
        if role is not None:
            messages.append(Message(role, content, parts, calls, call_id, state))
    if total > MAX_TOTAL_BYTES:
        bad.append(
            FieldViolation("messages", f"at most {MAX_TOTAL_BYTES} bytes of content in all, got {total}")
        )
    return tuple(messages)


def _check_sampling(request: Any, bad: list[FieldViolation]) -> tuple[float | None, int | None, float | None]:
    temperature = request.temperature if request.HasField("temperature") else None
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        bad.append(FieldViolation("temperature", f"must be from 0 to 2, got {temperature}"))
    max_tokens = request.max_tokens if request.HasField("max_tokens") else None
    if max_tokens is not None and not 1 <= max_tokens <= MAX_TOKENS:
        bad.append(FieldViolation("max_tokens", f"must be from 1 to {MAX_TOKENS}, got {max_tokens}"))
    top_p = request.top_p if request.HasField("top_p") else None
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        bad.append(FieldViolation("top_p", f"must be from 0 to 1, got {top_p}"))
    return temperature, max_tokens, top_p


def validate_chat(request: Any, registry: Registry, limits: FeatureLimits | None = None) -> ChatInput:
    """Check a ChatRequest or StreamChatRequest; raise INVALID_ARGUMENT on any bad field."""
    spec = registry.resolve(request.provider)
    limits = limits or FeatureLimits()
    size = request.ByteSize()
    if size > limits.max_request_bytes:
        raise_violations(
            [
                FieldViolation(
                    "messages",
                    f"the request is {size} bytes; at most {limits.max_request_bytes} "
                    "(RMLLM_MAX_REQUEST_BYTES): send fewer or smaller images and documents",
                )
            ],
            spec.id,
        )
    bad: list[FieldViolation] = []
    model = request.model
    if len(model) > MAX_MODEL_CHARS:
        bad.append(FieldViolation("model", f"at most {MAX_MODEL_CHARS} characters, got {len(model)}"))
    elif model and not _printable_word(model):
        bad.append(FieldViolation("model", "must not contain whitespace or control characters"))
    messages = _check_messages(request, bad, limits)
    temperature, max_tokens, top_p = _check_sampling(request, bad)
    stop = tuple(request.stop) if request.stop else ()
    if len(stop) > MAX_STOP:
        bad.append(FieldViolation("stop", f"at most {MAX_STOP} stop sequences, got {len(stop)}"))
    for index, sequence in enumerate(stop):
        if not 1 <= len(sequence) <= MAX_STOP_CHARS:
            bad.append(FieldViolation(f"stop[{index}]", f"must be 1 to {MAX_STOP_CHARS} characters"))
    if request.tools or request.HasField("tool_choice"):
        tools, tool_choice = check_tools(request, bad)
    else:  # no tools declared or chosen: nothing to check
        tools, tool_choice = (), None
    response_format = check_response_format(request, bad)
    reasoning = check_reasoning(request, bad)
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
    raise_violations(bad, spec.id)
    return ChatInput(
        spec,
        ChatParams(
            model,
            messages,
            temperature,
            max_tokens,
            top_p,
            stop,
            tools,
            tool_choice,
            parallel,
            response_format,
            reasoning,
        ),
    )


def check_api_key(api_key: str, bad: list[FieldViolation]) -> None:
    """An explicit TestKey key: at most 4 KiB, no whitespace or control characters.

    The descriptions never quote the key.
    """
    if _utf8_length(api_key) > MAX_API_KEY_BYTES:
        bad.append(FieldViolation("api_key", f"at most {MAX_API_KEY_BYTES} bytes"))
    elif not _printable_word(api_key):
        bad.append(FieldViolation("api_key", "must not contain whitespace or control characters"))


def check_base_url(base_url: str, spec: ProviderSpec, allow_custom: bool, bad: list[FieldViolation]) -> str:
    """A TestKey endpoint override under the shared URL rule (``rmllm_common.urls``) and
    the custom-base-URL policy; returns it normalised ("" when absent or refused)."""
    if not base_url:
        return ""
    try:
        normalised = urls.check_base_url(base_url)
    except urls.BaseUrlError as exc:
        bad.append(FieldViolation("base_url", str(exc)))
        return ""
    refusal = urls.custom_endpoint_refusal(normalised, spec, allow_custom)
    if refusal is not None:
        bad.append(FieldViolation("base_url", refusal))
        return ""
    return normalised
