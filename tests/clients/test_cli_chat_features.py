"""``rmllm chat --image --pdf --json-schema --tool --reasoning``: what is sent, what is printed.

Tool calls print as one JSON document on stdout; reasoning is hidden unless
``--show-reasoning`` (then on stderr, dimmed on a terminal); a schema or tool file
that is missing, not JSON or not an object schema is a one-line usage error
(exit 2) naming the file, and nothing is sent.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict
from realmultillm.llm.v1 import llm_pb2
from testkit.fake_grpc import TOKEN, FakeServers

from clients.cli import main

SECRET = "sk-test-secret-value-abcd"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def rmllm(
    fake: FakeServers, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Run]:
    """``rmllm`` against the fakes, with a config file of its own."""
    for name in ("RMLLM_TLS", "RMLLM_TLS_CA", "RMLLM_TLS_CERT", "RMLLM_TLS_KEY", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RMLLM_TARGET", fake.llm_target)
    monkeypatch.setenv("RMLLM_VAULT_TARGET", fake.vault_target)
    monkeypatch.setenv("RMLLM_TOKEN", TOKEN)
    monkeypatch.setenv("RMLLM_CONFIG", str(tmp_path / "config" / "config.toml"))

    def call(*argv: str) -> Run:
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return call


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_attachments_schema_tools_and_reasoning_are_sent(
    rmllm: Callable[..., Run], fake: FakeServers, tmp_path: Path
) -> None:
    fake.store("openai", SECRET)
    (tmp_path / "chart.png").write_bytes(b"\x89PNG")
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.7")
    (tmp_path / "answer.json").write_text(
        json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}})
    )
    (tmp_path / "tools.json").write_text(json.dumps([WEATHER]))
    result = rmllm(
        "chat",
        "-p",
        "openai",
        "--image",
        str(tmp_path / "chart.png"),
        "--image",
        "https://example.com/a.jpg",
        "--pdf",
        str(tmp_path / "report.pdf"),
        "--json-schema",
        str(tmp_path / "answer.json"),
        "--tool",
        str(tmp_path / "tools.json"),
        "--tool-choice",
        "get_weather",
        "--reasoning",
        "high",
        "compare",
    )
    assert result.code == 0, result.err
    request = fake.state.calls[-1][1]
    parts = request.messages[0].parts
    assert (parts[0].image.mime_type, parts[0].image.data) == ("image/png", b"\x89PNG")
    assert parts[1].image.url == "https://example.com/a.jpg"
    assert parts[2].document.data == b"%PDF-1.7"
    assert request.response_format.type == llm_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert request.response_format.name == "answer"
    assert MessageToDict(request.tools[0].parameters)["required"] == ["city"]
    assert request.tool_choice.name == "get_weather"
    assert request.reasoning.effort == llm_pb2.REASONING_EFFORT_HIGH
    assert not request.reasoning.include_reasoning


def test_tool_calls_print_as_json_and_reasoning_only_when_asked(
    rmllm: Callable[..., Run], fake: FakeServers, tmp_path: Path
) -> None:
    fake.store("openai", SECRET)
    fake.state.tool_calls = [llm_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')]
    fake.state.reasoning = ["Paris, ", "so one call."]
    (tmp_path / "tools.json").write_text(json.dumps(WEATHER))

    hidden = rmllm("chat", "-p", "openai", "--tool", str(tmp_path / "tools.json"), "weather in Paris?")
    assert hidden.code == 0
    text, _, document = hidden.out.partition("\n")
    assert text == "Hello world"
    assert json.loads(document) == {
        "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    }
    assert "so one call" not in hidden.err

    shown = rmllm("chat", "-p", "openai", "--show-reasoning", "weather in Paris?")
    assert "Paris, so one call." in shown.err
    assert fake.state.calls[-1][1].reasoning.include_reasoning
    assert "\x1b[2m" not in shown.err  # dimmed only on a terminal


@pytest.mark.parametrize(
    ("flag", "content", "says"),
    [
        ("--json-schema", "{not json", "not valid JSON"),
        ("--json-schema", '{"type": "array"}', "object schema"),
        ("--tool", '{"description": "no name"}', 'needs a "name"'),
        ("--tool", '{"name": "f", "parameters": {"type": "string"}}', "object schema"),
        ("--json-schema", None, "cannot read it"),
    ],
)
def test_bad_files_are_usage_errors_naming_the_file(  # noqa: PLR0917 - fixtures and parameters
    rmllm: Callable[..., Run], fake: FakeServers, tmp_path: Path, flag: str, content: str | None, says: str
) -> None:
    fake.store("openai", SECRET)
    path = tmp_path / "file.json"
    if content is not None:
        path.write_text(content)
    calls = len(fake.state.calls)
    result = rmllm("chat", "-p", "openai", flag, str(path), "hi")
    assert result.code == 2
    assert says in result.err and str(path) in result.err
    assert result.err.count("\n") == 1
    assert len(fake.state.calls) == calls
