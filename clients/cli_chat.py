"""``rmllm chat``'s workload flags: attachments, JSON schema, tools, reasoning, and their output.

``add_flags`` declares ``--image PATH|URL`` and ``--pdf PATH`` (repeatable),
``--json-schema FILE``, ``--tool FILE`` (repeatable; a tool as
``{"name", "description", "parameters"}``, OpenAI's ``{"type": "function",
"function": {...}}``, or a list of either), ``--tool-choice`` and ``--reasoning
low|medium|high`` with ``--show-reasoning``. ``chat_options`` reads them into the
client's arguments, refusing a file that is missing, not JSON, or not an object
schema with a ``UsageError`` that names the file. ``tool_calls_json`` renders the
answer's tool calls as one JSON document for stdout; ``dimmed`` shades reasoning
(printed to stderr as it arrives, with ``--show-reasoning``) on a terminal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clients.datatypes import Document, Image, Message, Reasoning, ResponseFormat, Role, Tool, ToolCall


class UsageError(Exception):
    """A bad command line (exit code 2)."""


def add_flags(chat: argparse.ArgumentParser) -> None:
    """Declare the workload flags on the ``chat`` subcommand."""
    chat.add_argument("--image", action="append", default=[], metavar="PATH|URL", help="attach an image")
    chat.add_argument("--pdf", action="append", default=[], metavar="PATH", help="attach a PDF")
    chat.add_argument("--json-schema", metavar="FILE", help="answer as JSON matching this JSON Schema file")
    chat.add_argument(
        "--tool", action="append", default=[], metavar="FILE", help="declare tools from a JSON file"
    )
    chat.add_argument(
        "--tool-choice", metavar="auto|none|required|NAME", help="which tool the model may call"
    )
    chat.add_argument("--reasoning", choices=("low", "medium", "high"), help="reasoning effort")
    chat.add_argument(
        "--show-reasoning", action="store_true", help="ask for the reasoning and print it (dimmed, on stderr)"
    )


def _json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _object_schema(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type", "object") != "object":
        raise UsageError(f'{where}: must be a JSON object schema ("type": "object")')
    return value


def _tools(path: str) -> list[Tool]:
    data = _json_file(path, "--tool")
    entries = data if isinstance(data, list) else [data]
    tools: list[Tool] = []
    for raw in entries:
        entry = raw
        if (
            isinstance(entry, dict)
            and entry.get("type") == "function"
            and isinstance(entry.get("function"), dict)
        ):
            entry = entry["function"]
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UsageError(f'--tool {path}: each tool needs a "name" (and "description", "parameters")')
        parameters = entry.get("parameters")
        if parameters is not None:
            parameters = _object_schema(parameters, f"--tool {path}: {entry['name']}.parameters")
        tools.append(
            Tool(
                entry["name"], str(entry.get("description", "")), parameters, bool(entry.get("strict", False))
            )
        )
    return tools


def _image(value: str) -> Image:
    if value.startswith(("http://", "https://", "data:")):
        return Image(url=value)
    try:
        return Image.from_file(value)
    except OSError as exc:
        raise UsageError(f"--image {value}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UsageError(f"--image {exc}") from None


def _pdf(path: str) -> Document:
    try:
        return Document.from_file(path)
    except OSError as exc:
        raise UsageError(f"--pdf {path}: cannot read it ({exc.strerror or exc})") from None


def chat_options(args: argparse.Namespace, prompt: str) -> tuple[list[Message], dict[str, Any]]:
    """The conversation (the prompt with its attachments) and the client's keyword arguments."""
    parts: list[Image | Document] = [*(_image(v) for v in args.image), *(_pdf(p) for p in args.pdf)]
    options: dict[str, Any] = {}
    tools = [tool for path in args.tool for tool in _tools(path)]
    if tools:
        options["tools"] = tools
    if args.tool_choice:
        options["tool_choice"] = args.tool_choice
    if args.json_schema:
        schema = _object_schema(
            _json_file(args.json_schema, "--json-schema"), f"--json-schema {args.json_schema}"
        )
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(args.json_schema).stem)[:64]
        options["response_format"] = ResponseFormat.json_schema(name or "answer", schema)
    if args.reasoning or args.show_reasoning:
        options["reasoning"] = Reasoning(args.reasoning, include=args.show_reasoning)
    return [Message(Role.USER, prompt, parts=parts)], options


def tool_calls_json(calls: tuple[ToolCall, ...]) -> str:
    """The tool calls as JSON: id, name, and the arguments parsed (or as text if not JSON)."""
    rendered = []
    for call in calls:
        try:
            arguments: Any = call.args()
        except ValueError:
            arguments = call.arguments
        rendered.append({"id": call.id, "name": call.name, "arguments": arguments})
    return json.dumps({"tool_calls": rendered}, ensure_ascii=False, indent=2)


def dimmed(text: str, terminal: bool) -> str:
    """Reasoning text, shaded on a terminal."""
    return f"\x1b[2m{text}\x1b[0m" if terminal else text
