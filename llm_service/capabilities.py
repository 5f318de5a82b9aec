"""Capability checks: what a chat request needs against what the chosen model offers.

``check_capabilities`` compares the request's tools, parallel calls, images,
documents, JSON Schema output and reasoning options with the registry's data for
the model (``ModelSpec.capabilities``, ``reasoning_efforts``) and the provider
(``reasoning_request``, ``image_urls``, ``parallel_tool_switch``), and raises
``CapabilityUnsupported`` (FAILED_PRECONDITION) naming the field and the model: a
feature is refused, never dropped silently. A model the registry does not list
passes through, and the provider decides.
"""

from __future__ import annotations

from llm_service.adapters.base import ChatParams, DocumentPart, ImagePart
from rmllm_common.errors import CapabilityUnsupported
from rmllm_common.registry import ModelSpec, ProviderSpec


def _refuse(spec: ProviderSpec, model: str, field: str, what: str) -> CapabilityUnsupported:
    return CapabilityUnsupported(
        f"{field}: {what}; choose a model that supports it (ListProviders shows each model's capabilities)",
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
