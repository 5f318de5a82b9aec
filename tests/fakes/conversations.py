"""Named conversations for the feature transcripts, and the tool loop's second turn.

``build(name, provider, changes)`` gives the ``ChatParams`` a transcript's
``request`` names: ``tools_first`` (a user asks for the weather in two cities, one
declared tool, parallel calls allowed) or ``structured`` (a JSON-schema answer).
``changes`` come from the transcript's ``params`` (``model``, ``reasoning``).
``second_turn`` appends the first answer (its text, tool calls and
``provider_state``, exactly as a caller sends them back) and one tool result per
call. The same shapes are used by the end-to-end tool loop.
"""

from __future__ import annotations

import json
from typing import Any

from llm_service.adapters.base import (
    ChatParams,
    Finished,
    Message,
    Reasoning,
    ResponseFormat,
    ToolChoice,
    ToolSpec,
)
from rmllm_common.registry import default_registry

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city's name"},
        "path": {"type": "string"},
        "units": {"type": "string", "enum": ["metric", "imperial"]},
    },
    "required": ["city"],
}
WEATHER = ToolSpec("get_weather", "The weather now in a city.", WEATHER_SCHEMA)
PLACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "rating": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "rating", "tags"],
    "additionalProperties": False,
}
RESULTS = ('{"temp_c": 24, "sky": "clear"}', "rain, 12°C")


def reasoning_of(raw: dict[str, Any] | None) -> Reasoning | None:
    """A transcript's ``params.reasoning`` (``effort``, ``budget_tokens``, ``include``) as ``Reasoning``."""
    return (
        Reasoning(raw.get("effort"), int(raw.get("budget_tokens", 0)), bool(raw.get("include")))
        if raw
        else None
    )


def build(name: str, provider: str, changes: dict[str, Any] | None = None) -> ChatParams:
    """The conversation ``name`` for ``provider``'s default model (or ``changes['model']``)."""
    changes = dict(changes or {})
    spec = default_registry().providers[provider]
    model = changes.pop("model", spec.default_model)
    reasoning = reasoning_of(changes.pop("reasoning", None))
    if changes:
        raise ValueError(f"unknown params {sorted(changes)}")
    system = Message("system", "You are a concise assistant.")
    if name == "tools_first":
        return ChatParams(
            model=model,
            messages=(system, Message("user", "What is the weather in São Paulo and in Tokyo?")),
            max_tokens=1024,
            tools=(WEATHER,),
            tool_choice=ToolChoice(mode="auto"),
            parallel_tool_calls=True,
            reasoning=reasoning,
        )
    if name == "structured":
        return ChatParams(
            model=model,
            messages=(system, Message("user", "Name a café in Paris, as JSON.")),
            max_tokens=1024,
            response_format=ResponseFormat("json_schema", "place", PLACE_SCHEMA, strict=True),
            reasoning=reasoning,
        )
    raise ValueError(f"unknown conversation {name!r}")


def second_turn(first: ChatParams, answer_text: str, finished: Finished) -> ChatParams:
    """The first turn, the answer as the caller sends it back, then one result per call."""
    assistant = Message(
        "assistant", answer_text, tool_calls=finished.tool_calls, provider_state=finished.provider_state
    )
    results = tuple(
        Message("tool", RESULTS[i % len(RESULTS)], tool_call_id=call.id)
        for i, call in enumerate(finished.tool_calls)
    )
    return ChatParams(
        model=first.model,
        messages=(*first.messages, assistant, *results),
        max_tokens=first.max_tokens,
        tools=first.tools,
        tool_choice=first.tool_choice,
        parallel_tool_calls=first.parallel_tool_calls,
        reasoning=first.reasoning,
    )


def arguments_of(finished: Finished) -> list[Any]:
    """Each call's arguments, parsed (they must be JSON)."""
    return [json.loads(c.arguments) for c in finished.tool_calls]
