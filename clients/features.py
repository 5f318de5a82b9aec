"""Tools, attachments, structured output and reasoning: the typed values and how they fill a request.

``Tool`` (``Tool.from_function`` builds one from a Python function's signature
and docstring: parameter types as JSON Schema, parameters without defaults
required, the docstring's ``Args:`` lines as descriptions), ``ToolCall`` (what
the model asked for: ``id``, ``name``, the ``arguments`` JSON text; ``.args()``
parses it), ``Image`` and ``Document`` message parts, ``ResponseFormat``
(``ResponseFormat.json_schema(name, schema)``) and ``Reasoning`` options.
``apply_features`` puts them on a ``ChatRequest``.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from google.protobuf import struct_pb2
from realmultillm.llm.v1 import llm_pb2

_MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
_MIME_BY_SUFFIX[".webp"] = "image/webp"


@dataclass(frozen=True, slots=True)
class Image:
    """An image part: an http(s) or ``data:`` URL, or bytes with their MIME type."""

    url: str = ""
    data: bytes = b""
    mime_type: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> Image:
        """An image read from a file; the type from its suffix (png, jpg, gif, webp)."""
        path = Path(path)
        mime = _MIME_BY_SUFFIX.get(path.suffix.lower())
        if mime is None:
            raise ValueError(f"{path}: unsupported image type; use a .png, .jpg, .gif or .webp file")
        return cls(data=path.read_bytes(), mime_type=mime)

    def to_proto(self) -> llm_pb2.ContentPart:
        if self.url:
            return llm_pb2.ContentPart(image=llm_pb2.ImagePart(url=self.url, mime_type=self.mime_type))
        return llm_pb2.ContentPart(image=llm_pb2.ImagePart(data=self.data, mime_type=self.mime_type))


@dataclass(frozen=True, slots=True)
class Document:
    """A document part (a PDF), given inline."""

    data: bytes
    mime_type: str = "application/pdf"

    @classmethod
    def from_file(cls, path: str | Path) -> Document:
        return cls(Path(path).read_bytes())

    def to_proto(self) -> llm_pb2.ContentPart:
        return llm_pb2.ContentPart(document=llm_pb2.DocumentPart(data=self.data, mime_type=self.mime_type))


Part = str | Image | Document


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for: ``arguments`` is the JSON text it produced."""

    id: str
    name: str
    arguments: str

    def args(self) -> Any:
        """The arguments, parsed (``{}`` when empty)."""
        return json.loads(self.arguments) if self.arguments else {}

    def to_proto(self) -> llm_pb2.ToolCall:
        return llm_pb2.ToolCall(id=self.id, name=self.name, arguments=self.arguments)

    @classmethod
    def from_proto(cls, call: llm_pb2.ToolCall) -> ToolCall:
        return cls(call.id, call.name, call.arguments)


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_schema(annotation: Any) -> dict[str, Any]:
    """A JSON Schema for a type annotation (str, int, float, bool, list[...], dict,
    Literal[...], Optional[...]); anything else is left open."""
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is Literal:
        return {"enum": list(arguments)}
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return {"type": "array", "items": _json_schema(arguments[0])} if arguments else {"type": "array"}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in arguments if a is not type(None)]
        return _json_schema(kept[0]) if len(kept) == 1 else {"anyOf": [_json_schema(a) for a in kept]}
    return {}


def _doc_params(doc: str) -> tuple[str, dict[str, str]]:
    """A docstring's summary and its ``name: description`` lines (Google style ``Args:``)."""
    summary, _, rest = doc.strip().partition("\n\n")
    described: dict[str, str] = {}
    for line in rest.splitlines():
        match = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$", line)
        if match and match.group(1) not in ("Args", "Returns", "Raises"):
            described[match.group(1)] = match.group(2).strip()
    return " ".join(summary.split()), described


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call: a name, a description and a JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool = False

    @classmethod
    def from_function(cls, function: Callable[..., Any], *, strict: bool = False) -> Tool:
        """A tool from a function: its name, its docstring's first paragraph as the
        description, and a schema from its annotated parameters (those without a
        default are required; ``Args:`` lines of the docstring describe them)."""
        summary, described = _doc_params(inspect.getdoc(function) or "")
        hints = typing.get_type_hints(function)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            schema = _json_schema(hints.get(name, Any))
            if name in described:
                schema["description"] = described[name]
            properties[name] = schema
            if parameter.default is inspect.Parameter.empty:
                required.append(name)
        parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        if strict:
            parameters["additionalProperties"] = False
        return cls(function.__name__, summary, parameters, strict)

    def to_proto(self) -> llm_pb2.Tool:
        tool = llm_pb2.Tool(name=self.name, description=self.description, strict=self.strict)
        if self.parameters is not None:
            tool.parameters.CopyFrom(struct(self.parameters))
        return tool


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON object as a ``google.protobuf.Struct``."""
    out = struct_pb2.Struct()
    out.update(value)
    return out


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The answer's shape: ``text``, ``json_object``, or ``json_schema`` with a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = ""
    schema: dict[str, Any] | None = None
    strict: bool = False

    @classmethod
    def json_schema(cls, name: str, schema: dict[str, Any], *, strict: bool = True) -> ResponseFormat:
        return cls("json_schema", name, schema, strict)

    def to_proto(self) -> llm_pb2.ResponseFormat:
        kind = {"text": 1, "json_object": 2, "json_schema": 3}[self.type]
        out = llm_pb2.ResponseFormat(type=kind, name=self.name, strict=self.strict)  # type: ignore[arg-type]
        if self.schema is not None:
            out.schema.CopyFrom(struct(self.schema))
        return out


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Reasoning options: ``effort`` (low, medium, high) or a token budget, and
    whether to return the reasoning text."""

    effort: Literal["low", "medium", "high"] | None = None
    budget_tokens: int = 0
    include: bool = False

    def to_proto(self) -> llm_pb2.ReasoningOptions:
        effort = {None: 0, "low": 1, "medium": 2, "high": 3}[self.effort]
        return llm_pb2.ReasoningOptions(
            effort=effort,  # type: ignore[arg-type]
            budget_tokens=self.budget_tokens,
            include_reasoning=self.include,
        )


ToolChoiceArg = Literal["auto", "none", "required"] | str


def apply_features(
    request: llm_pb2.ChatRequest,
    *,
    tools: Sequence[Tool | Callable[..., Any]] = (),
    tool_choice: ToolChoiceArg | None = None,
    parallel_tool_calls: bool | None = None,
    response_format: ResponseFormat | None = None,
    reasoning: Reasoning | None = None,
) -> llm_pb2.ChatRequest:
    """Fill a request's tools, tool choice, response format and reasoning options.

    ``tools`` may hold plain functions (``Tool.from_function``); ``tool_choice``
    is auto, none, required, or the name of one tool.
    """
    request.tools.extend((t if isinstance(t, Tool) else Tool.from_function(t)).to_proto() for t in tools)
    if tool_choice is not None:
        modes = {"auto": 1, "none": 2, "required": 3}
        if tool_choice in modes:
            request.tool_choice.mode = modes[tool_choice]  # type: ignore[assignment]
        else:
            request.tool_choice.name = tool_choice
    if parallel_tool_calls is not None:
        request.parallel_tool_calls = parallel_tool_calls
    if response_format is not None:
        request.response_format.CopyFrom(response_format.to_proto())
    if reasoning is not None:
        request.reasoning.CopyFrom(reasoning.to_proto())
    return request
