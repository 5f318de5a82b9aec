"""Capability checks: what a chat request needs against what the chosen model offers.

``check_capabilities`` compares the request's tools, parallel calls, images,
documents, JSON Schema output, reasoning options and sampling fields with the
registry's data for the model (``ModelSpec.capabilities``, ``reasoning_efforts``,
``unsupported_params``) and the provider (``reasoning_request``, ``image_urls``,
``parallel_tool_switch``), and raises ``CapabilityUnsupported``
(FAILED_PRECONDITION) naming the field and the model: a feature is refused, never
dropped silently. A model the registry does not list passes through, and the
provider decides. Anthropic's extended thinking (any reasoning effort or budget
there) takes no temperature, a top_p only from 0.95 to 1, no forced tool use (so
no forced JSON tool either) and a budget of at least 1024 tokens, as its
extended-thinking guide says; those requests are refused here rather than sent
for a 400. ``refused_params`` names the sampling fields a request cannot carry,
so that a stored default is not applied to them.
"""

from __future__ import annotations

from llm_service.adapters.base import ChatParams, DocumentPart, ImagePart
from rmllm_common.errors import CapabilityUnsupported
from rmllm_common.registry import ModelSpec, ProviderSpec

ANTHROPIC_MIN_THINKING_BUDGET = 1024
ANTHROPIC_THINKING_MIN_TOP_P = 0.95
_CHOOSE = "choose a model that supports it (ListProviders shows each model's capabilities)"


def _refuse(
    spec: ProviderSpec, model: str, field: str, what: str, hint: str = _CHOOSE
) -> CapabilityUnsupported:
    return CapabilityUnsupported(
        f"{field}: {what}; {hint}",
        provider=spec.id,
        metadata={"model": model, "field": field},
    )


def check_capabilities(spec: ProviderSpec, params: ChatParams) -> None:
    """Raise ``CapabilityUnsupported`` when the chosen model lacks what the request needs."""
    model = spec.model(params.model)
    if model is not None:
        _check_model(spec, model, params)
    _check_reasoning_style(spec, params)
    _check_parts(spec, model, params)
    _check_sampling(spec, model, params)


def _anthropic_thinking(spec: ProviderSpec, params: ChatParams) -> bool:
    reasoning = params.reasoning
    return (
        spec.wire_format == "anthropic"
        and reasoning is not None
        and bool(reasoning.effort or reasoning.budget_tokens)
    )


def refused_params(spec: ProviderSpec, params: ChatParams) -> dict[str, str]:
    """The sampling fields (``temperature``, ``top_p``, ``stop``) this request cannot
    carry to the chosen model, each with the reason; empty when it takes them all."""
    refused: dict[str, str] = {}
    model = spec.model(params.model)
    if model is not None:
        for name in model.unsupported_params:
            refused[name] = f"{spec.id} model {params.model} does not take {name}"
    if _anthropic_thinking(spec, params):
        refused["temperature"] = f"{spec.display_name}'s extended thinking does not take a temperature"
    return refused


def _check_sampling(spec: ProviderSpec, model: ModelSpec | None, params: ChatParams) -> None:
    given = {"temperature": params.temperature is not None, "top_p": params.top_p is not None}
    given["stop"] = bool(params.stop)
    for name, why in refused_params(spec, params).items():
        if given[name]:
            raise _refuse(spec, params.model, name, why, "leave it unset")
    if not _anthropic_thinking(spec, params):
        return
    thinking = f"{spec.display_name}'s extended thinking"
    if params.top_p is not None and params.top_p < ANTHROPIC_THINKING_MIN_TOP_P:
        raise _refuse(
            spec, params.model, "top_p", f"{thinking} takes a top_p from 0.95 to 1", "leave it unset"
        )
    choice = params.tool_choice
    if choice is not None and (choice.name or choice.mode == "required"):
        raise _refuse(
            spec,
            params.model,
            "tool_choice",
            f"{thinking} cannot be combined with forced tool use (REQUIRED or a named tool)",
            "use AUTO, or ask without reasoning",
        )
    fmt = params.response_format
    if fmt is not None and (
        fmt.type == "json_object" or (model is not None and model.json_schema_mode == "tool")
    ):
        raise _refuse(
            spec,
            params.model,
            "response_format",
            f"{thinking} cannot be combined with the forced tool that carries this JSON output",
            "ask for JSON_SCHEMA on a model with native structured output, or without reasoning",
        )
    budget = params.reasoning.budget_tokens if params.reasoning is not None else 0
    if budget and budget < ANTHROPIC_MIN_THINKING_BUDGET:
        raise _refuse(
            spec,
            params.model,
            "reasoning.budget_tokens",
            f"{thinking} takes a budget of at least {ANTHROPIC_MIN_THINKING_BUDGET} tokens",
            "ask for more, or for an effort",
        )


def _check_model(spec: ProviderSpec, model: ModelSpec, params: ChatParams) -> None:
    name = f"{spec.id} model {params.model}"
    if params.tools and not model.supports("tools"):
        raise _refuse(spec, params.model, "tools", f"{name} does not support tool calling")
    if params.parallel_tool_calls and not model.supports("parallel_tools"):
        raise _refuse(
            spec, params.model, "parallel_tool_calls", f"{name} does not support parallel tool calls"
        )
    fmt = params.response_format
    if fmt is not None and fmt.type == "json_schema" and not model.supports("json_schema"):
        raise _refuse(spec, params.model, "response_format", f"{name} does not support JSON schema output")
    reasoning = params.reasoning
    if reasoning is not None and (reasoning.effort or reasoning.budget_tokens):
        if not model.supports("reasoning"):
            raise _refuse(spec, params.model, "reasoning", f"{name} is not a reasoning model")
        if reasoning.effort and reasoning.effort not in model.reasoning_efforts:
            accepted = ", ".join(model.reasoning_efforts) or "none (it decides how long to think)"
            raise _refuse(spec, params.model, "reasoning.effort", f"{name} takes the efforts: {accepted}")


def _check_reasoning_style(spec: ProviderSpec, params: ChatParams) -> None:
    if params.parallel_tool_calls is False and params.tools and not spec.parallel_tool_switch:
        raise _refuse(
            spec,
            params.model,
            "parallel_tool_calls",
            f"{spec.display_name} cannot turn parallel tool calls off",
        )
    reasoning = params.reasoning
    if (
        reasoning is not None
        and reasoning.budget_tokens
        and spec.wire_format == "openai"
        and spec.reasoning_request != "reasoning_object"
    ):
        raise _refuse(
            spec,
            params.model,
            "reasoning.budget_tokens",
            f"{spec.display_name} takes an effort, not a token budget",
        )


def _check_parts(spec: ProviderSpec, model: ModelSpec | None, params: ChatParams) -> None:
    name = f"{spec.id} model {params.model}"
    for index, message in enumerate(params.messages):
        for part_index, part in enumerate(message.parts):
            path = f"messages[{index}].parts[{part_index}]"
            if isinstance(part, ImagePart):
                if model is not None and not model.supports("vision"):
                    raise _refuse(spec, params.model, f"{path}.image", f"{name} does not take images")
                if part.url and not spec.image_urls:
                    raise _refuse(
                        spec,
                        params.model,
                        f"{path}.image.url",
                        f"{spec.display_name} does not fetch image URLs; send the image's bytes instead",
                    )
            elif isinstance(part, DocumentPart) and model is not None and not model.supports("pdf"):
                raise _refuse(spec, params.model, f"{path}.document", f"{name} does not take PDF documents")
