"""Validation of the second-wave chat fields: parts, tool calls and results, tools, format, reasoning.

``check_message_extras`` reads one message's parts, tool calls, tool-call id and
provider state; ``check_tools``, ``check_response_format`` and ``check_reasoning``
read the request-level fields. Each bad field is one ``FieldViolation`` with its
path (``messages[2].parts[0].image.data``), reported together with the other
violations of the request as one INVALID_ARGUMENT (what the chosen model can do
is ``llm_service.capabilities``'s job). Size limits come from ``FeatureLimits``
(the service's settings).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict

from llm_service.adapters.assembly import read_state
from llm_service.adapters.base import (
    DocumentPart,
    Effort,
    ImagePart,
    Part,
    Reasoning,
    ResponseFormat,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolSpec,
    data_url,
)
from rmllm_common.errors import FieldViolation

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
DOCUMENT_TYPES = ("application/pdf",)
MAX_TOOLS = 128
MAX_DESCRIPTION_CHARS = 16_384
MAX_TOOL_CALL_ID_CHARS = 256
MAX_ARGUMENTS_BYTES = 1024 * 1024
MAX_BUDGET_TOKENS = 1_000_000
_EFFORTS: dict[int, Effort] = {1: "low", 2: "medium", 3: "high"}
_MODES = {1: "auto", 2: "none", 3: "required"}
_FORMATS = {0: "text", 1: "text", 2: "json_object", 3: "json_schema"}


@dataclass(frozen=True, slots=True)
class FeatureLimits:
    """Size limits of a request and its inline content (RMLLM_MAX_REQUEST_BYTES,
    RMLLM_MAX_IMAGE_BYTES, RMLLM_MAX_DOCUMENT_BYTES)."""

    max_request_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    max_document_bytes: int = 16 * 1024 * 1024

    @property
    def grpc_receive_bytes(self) -> int:
        """gRPC's own receive limit: twice the request limit, so a request over the
        limit but under this gets a clear INVALID_ARGUMENT instead of gRPC's bare
        RESOURCE_EXHAUSTED."""
        return 2 * self.max_request_bytes


def plain(value: Any) -> Any:
    """A Struct's dict with whole floats as ints (Struct stores every number as a double)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _schema(message: Any, name: str) -> dict[str, Any] | None:
    if not message.HasField(name):
        return None
    result: dict[str, Any] = plain(MessageToDict(getattr(message, name)))
    return result


def _object_schema(schema: dict[str, Any], path: str, bad: list[FieldViolation]) -> None:
    if schema.get("type", "object") != "object":
        bad.append(
            FieldViolation(path, f'must be an object schema ("type": "object"), got {schema.get("type")!r}')
        )


def _image(image: Any, path: str, limits: FeatureLimits, bad: list[FieldViolation]) -> ImagePart | None:
    source = image.WhichOneof("source")
    mime = image.mime_type.lower()
    if source == "url":
        url = image.url
        if url.startswith("data:"):
            decoded = data_url(url)
            if decoded is None:
                bad.append(
                    FieldViolation(f"{path}.url", "must be a base64 data: URL (data:image/png;base64,...)")
                )
                return None
            mime, data = decoded
            return _image_bytes(data, mime, path, where="url", limits=limits, bad=bad)
        if not re.match(r"^https?://[^\s]+$", url) or len(url) > 8192:
            bad.append(
                FieldViolation(f"{path}.url", "must be an http(s) or data: URL of at most 8192 characters")
            )
            return None
        if mime and mime not in IMAGE_TYPES:
            bad.append(FieldViolation(f"{path}.mime_type", f"must be one of {', '.join(IMAGE_TYPES)}"))
        return ImagePart(url=url, mime_type=mime)
    if source == "data":
        return _image_bytes(image.data, mime, path, where="data", limits=limits, bad=bad)
    bad.append(FieldViolation(path, "needs a url or data"))
    return None


def _image_bytes(
    data: bytes, mime: str, path: str, *, where: str, limits: FeatureLimits, bad: list[FieldViolation]
) -> ImagePart | None:
    if mime not in IMAGE_TYPES:
        bad.append(
            FieldViolation(f"{path}.mime_type", f"must be one of {', '.join(IMAGE_TYPES)}, got {mime[:64]!r}")
        )
        return None
    if not data:
        bad.append(FieldViolation(f"{path}.{where}", "must not be empty"))
        return None
    if len(data) > limits.max_image_bytes:
        bad.append(
            FieldViolation(
                f"{path}.{where}",
                f"the image is {len(data)} bytes; at most {limits.max_image_bytes} (RMLLM_MAX_IMAGE_BYTES)",
            )
        )
        return None
    return ImagePart(data=data, mime_type=mime)


def _document(
    document: Any, path: str, limits: FeatureLimits, bad: list[FieldViolation]
) -> DocumentPart | None:
    mime = document.mime_type.lower() or "application/pdf"
    if mime not in DOCUMENT_TYPES:
        bad.append(FieldViolation(f"{path}.mime_type", f"must be application/pdf, got {mime[:64]!r}"))
        return None
    size = len(document.data)
    if size == 0:
        bad.append(FieldViolation(f"{path}.data", "must not be empty"))
        return None
    if size > limits.max_document_bytes:
        bad.append(
            FieldViolation(
                f"{path}.data",
                f"the document is {size} bytes; "
                f"at most {limits.max_document_bytes} (RMLLM_MAX_DOCUMENT_BYTES)",
            )
        )
        return None
    return DocumentPart(bytes(document.data), mime)


def check_parts(
    message: Any, where: str, role: str, limits: FeatureLimits, bad: list[FieldViolation]
) -> tuple[Part, ...]:
    """The message's parts; images and documents only in user messages."""
    parts: list[Part] = []
    for index, part in enumerate(message.parts):
        path = f"{where}.parts[{index}]"
        kind = part.WhichOneof("part")
        if kind == "text":
            if not part.text:
                bad.append(FieldViolation(f"{path}.text", "must not be empty"))
            else:
                parts.append(TextPart(part.text))
            continue
        if kind is None:
            bad.append(FieldViolation(path, "needs text, an image or a document"))
            continue
        if role != "user":
            bad.append(FieldViolation(f"{path}.{kind}", "images and documents belong in user messages"))
            continue
        found = (
            _image(part.image, f"{path}.image", limits, bad)
            if kind == "image"
            else _document(part.document, f"{path}.document", limits, bad)
        )
        if found is not None:
            parts.append(found)
    return tuple(parts)


def check_tool_calls(
    message: Any, where: str, role: str, seen: dict[str, str], bad: list[FieldViolation]
) -> tuple[ToolCall, ...]:
    """An assistant message's tool calls, their ids unique within the message (a
    provider may reuse ids across turns); the ids are added to ``seen`` (id -> name)."""
    if not message.tool_calls:
        return ()
    if role != "assistant":
        bad.append(FieldViolation(f"{where}.tool_calls", "only assistant messages carry tool calls"))
        return ()
    calls: list[ToolCall] = []
    ids: set[str] = set()
    for index, call in enumerate(message.tool_calls):
        path = f"{where}.tool_calls[{index}]"
        if not call.id or len(call.id) > MAX_TOOL_CALL_ID_CHARS:
            bad.append(FieldViolation(f"{path}.id", f"must be 1 to {MAX_TOOL_CALL_ID_CHARS} characters"))
        elif call.id in ids:
            bad.append(FieldViolation(f"{path}.id", f"the id {call.id[:64]!r} is used twice in this message"))
        ids.add(call.id)
        if not TOOL_NAME.match(call.name):
            bad.append(FieldViolation(f"{path}.name", "must match ^[A-Za-z0-9_-]{1,64}$"))
        arguments = call.arguments
        if len(arguments.encode("utf-8", "surrogatepass")) > MAX_ARGUMENTS_BYTES:
            bad.append(FieldViolation(f"{path}.arguments", f"at most {MAX_ARGUMENTS_BYTES} bytes"))
        elif arguments:
            try:
                parsed = json.loads(arguments)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                bad.append(
                    FieldViolation(f"{path}.arguments", "must be a JSON object (the text the model produced)")
                )
        seen[call.id] = call.name
        calls.append(ToolCall(call.id, call.name, arguments))
    return tuple(calls)


def check_message_extras(
    message: Any, where: str, role: str, seen: dict[str, str], bad: list[FieldViolation]
) -> tuple[str, bytes]:
    """A message's ``tool_call_id`` and ``provider_state``, checked against its role."""
    call_id = message.tool_call_id
    if role == "tool":
        if not call_id:
            bad.append(FieldViolation(f"{where}.tool_call_id", "required on ROLE_TOOL messages"))
        elif call_id not in seen:
            bad.append(
                FieldViolation(
                    f"{where}.tool_call_id",
                    f"{call_id[:64]!r} matches no tool call of an earlier assistant message",
                )
            )
    elif call_id:
        bad.append(FieldViolation(f"{where}.tool_call_id", "only ROLE_TOOL messages carry a tool_call_id"))
    state = bytes(message.provider_state)
    if state:
        if role != "assistant":
            bad.append(
                FieldViolation(f"{where}.provider_state", "only assistant messages carry provider_state")
            )
        else:
            try:
                read_state(state)
            except ValueError:
                bad.append(
                    FieldViolation(
                        f"{where}.provider_state",
                        "must be the provider_state of an earlier answer, sent back unchanged",
                    )
                )
    return call_id, state


def check_tools(request: Any, bad: list[FieldViolation]) -> tuple[tuple[ToolSpec, ...], ToolChoice | None]:
    """The declared tools and the tool choice."""
    tools: list[ToolSpec] = []
    names: set[str] = set()
    if len(request.tools) > MAX_TOOLS:
        bad.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools, got {len(request.tools)}"))
    for index, tool in enumerate(request.tools):
        path = f"tools[{index}]"
        if not TOOL_NAME.match(tool.name):
            bad.append(FieldViolation(f"{path}.name", "must match ^[A-Za-z0-9_-]{1,64}$"))
        elif tool.name in names:
            bad.append(FieldViolation(f"{path}.name", f"{tool.name!r} is declared twice"))
        names.add(tool.name)
        if len(tool.description) > MAX_DESCRIPTION_CHARS:
            bad.append(FieldViolation(f"{path}.description", f"at most {MAX_DESCRIPTION_CHARS} characters"))
        schema = _schema(tool, "parameters")
        if schema is not None:
            _object_schema(schema, f"{path}.parameters", bad)
        tools.append(ToolSpec(tool.name, tool.description, schema, tool.strict))
    return tuple(tools), _tool_choice(request, names, bad)


def _tool_choice(request: Any, names: set[str], bad: list[FieldViolation]) -> ToolChoice | None:
    choice: ToolChoice | None = None
    if request.HasField("tool_choice"):
        which = request.tool_choice.WhichOneof("choice")
        if which == "name":
            name = request.tool_choice.name
            if name not in names:
                bad.append(
                    FieldViolation("tool_choice.name", f"{name[:64]!r} is not one of the declared tools")
                )
            choice = ToolChoice(name=name)
        elif which == "mode":
            mode = _MODES.get(request.tool_choice.mode)
            if mode is None:
                bad.append(FieldViolation("tool_choice.mode", "must be AUTO, NONE or REQUIRED"))
            elif mode == "required" and not names:
                bad.append(FieldViolation("tool_choice.mode", "REQUIRED needs declared tools"))
            else:
                choice = ToolChoice(mode=mode)  # type: ignore[arg-type]
    return choice


def check_response_format(request: Any, bad: list[FieldViolation]) -> ResponseFormat | None:
    """The requested answer shape."""
    if not request.HasField("response_format"):
        return None
    raw = request.response_format
    kind = _FORMATS.get(raw.type)
    if kind is None:
        bad.append(FieldViolation("response_format.type", "must be TEXT, JSON_OBJECT or JSON_SCHEMA"))
        return None
    schema = _schema(raw, "schema")
    if kind != "json_schema":
        if schema is not None:
            bad.append(FieldViolation("response_format.schema", "only with RESPONSE_FORMAT_TYPE_JSON_SCHEMA"))
        return None if kind == "text" else ResponseFormat("json_object")
    if schema is None:
        bad.append(FieldViolation("response_format.schema", "required with RESPONSE_FORMAT_TYPE_JSON_SCHEMA"))
        return None
    _object_schema(schema, "response_format.schema", bad)
    name = raw.name or "response"
    if not TOOL_NAME.match(name):
        bad.append(FieldViolation("response_format.name", "must match ^[A-Za-z0-9_-]{1,64}$"))
    return ResponseFormat("json_schema", name, schema, raw.strict)


def check_reasoning(request: Any, bad: list[FieldViolation]) -> Reasoning | None:
    """The reasoning options."""
    if not request.HasField("reasoning"):
        return None
    raw = request.reasoning
    effort = _EFFORTS.get(raw.effort)
    if raw.effort and effort is None:
        bad.append(FieldViolation("reasoning.effort", "must be LOW, MEDIUM or HIGH"))
    if not 0 <= raw.budget_tokens <= MAX_BUDGET_TOKENS:
        bad.append(FieldViolation("reasoning.budget_tokens", f"must be from 0 to {MAX_BUDGET_TOKENS}"))
    return Reasoning(effort, max(0, raw.budget_tokens), raw.include_reasoning)
