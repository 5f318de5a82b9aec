"""Ollama's native ``/api/chat`` adapter: the base-URL rule, the request, the answer, the errors.

Checked against Ollama's ``api/types.go`` (``ChatRequest``, ``Message``,
``ToolCall``, ``ChatResponse``, ``Metrics``, ``ThinkValue``) and its docs
(``docs/api.md`` "Generate a chat completion", the tool-calling guide). The
recorded native transcripts (``ollama_native_*``) run in every split in
``test_adapter_transcripts``; here are the mappings one at a time, over real HTTP
to the fake provider.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import pytest
from fakes import FakeProvider, Scenario, transcripts
from fakes.harness import Collected, collect, endpoint

from llm_service.adapters import adapter_for
from llm_service.adapters.base import (
    ChatParams,
    DocumentPart,
    Endpoint,
    FinishReason,
    ImagePart,
    Message,
    ProbeOutcome,
    Reasoning,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from llm_service.adapters.ollama import OllamaAdapter, api_root
from llm_service.adapters.openai import OpenAIAdapter
from llm_service.http import KIB, UpstreamLimits, new_http_session
from llm_service.netpolicy import EndpointPolicy
from rmllm_common import errors
from rmllm_common.registry import default_registry, load_registry
from rmllm_common.secret import Secret

LLAMA = default_registry().providers["llama"]
PNG = b"\x89PNG\r\n\x1a\nfake-image-bytes"


def chat(*messages: Message, **changes: object) -> ChatParams:
    return ChatParams("llama3.2", messages or (Message("user", "Hello"),), **changes)  # type: ignore[arg-type]


def line(**fields: object) -> bytes:
    base: dict[str, object] = {"model": "llama3.2", "created_at": "2025-05-08T14:22:01.5Z"}
    return json.dumps({**base, **fields}, separators=(",", ":")).encode() + b"\n"


def done(reason: str = "stop", **metrics: int) -> bytes:
    return line(message={"role": "assistant", "content": ""}, done_reason=reason, done=True, **metrics)


def ndjson(*lines: bytes) -> Scenario:
    return Scenario(body=b"".join(lines), headers={"Content-Type": "application/x-ndjson"}, route="chat")


# --- which adapter, where ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "wire"),
    [
        ("http://localhost:11434/v1", "openai"),
        ("http://localhost:11434/v1/", "openai"),
        ("http://gpu-box:11434", "ollama"),
        ("http://gpu-box:11434/", "ollama"),
        ("http://gpu-box:11434/api", "ollama"),
        ("http://gpu-box:11434/api/", "ollama"),
        ("https://proxy.example/ollama", "ollama"),
        ("https://proxy.example/ollama/v1", "openai"),
        ("", "openai"),  # the registry's default, http://localhost:11434/v1
    ],
)
def test_the_base_url_picks_the_wire_format(base_url: str, wire: str) -> None:
    assert LLAMA.wire_format_at(base_url) == wire
    adapter = adapter_for(LLAMA, base_url)
    assert isinstance(adapter, OllamaAdapter if wire == "ollama" else OpenAIAdapter)


def test_providers_without_a_native_format_always_speak_their_own() -> None:
    openai = default_registry().providers["openai"]
    assert openai.native_format is None
    assert openai.wire_format_at("https://example.test") == "openai"
    assert LLAMA.native_format == "ollama" and LLAMA.base_url == "http://localhost:11434/v1"


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("http://gpu-box:11434", "http://gpu-box:11434/api"),
        ("http://gpu-box:11434/", "http://gpu-box:11434/api"),
        ("http://gpu-box:11434/api", "http://gpu-box:11434/api"),
        ("http://gpu-box:11434/api/", "http://gpu-box:11434/api"),
        ("https://proxy.example/ollama", "https://proxy.example/ollama/api"),
    ],
)
def test_api_root(base_url: str, root: str) -> None:
    assert api_root(base_url) == root


@pytest.mark.parametrize("bad", ['"grpc"', '"openai"'])
def test_the_registry_refuses_a_bad_native_format(tmp_path: Path, bad: str) -> None:
    text = (Path(__file__).parents[2] / "rmllm_common" / "providers.toml").read_text()
    broken = tmp_path / "providers.toml"
    broken.write_text(text.replace('native_format = "ollama"', f"native_format = {bad}"))
    with pytest.raises(ValueError, match="native_format"):
        load_registry(broken)


@pytest.mark.parametrize("path", ["", "/", "/api", "/api/"])
async def test_a_native_base_url_posts_to_api_chat(
    fake: FakeProvider, http: aiohttp.ClientSession, path: str
) -> None:
    ep = endpoint(fake, "llama", path=path)
    fake.enqueue(Scenario.transcript("ollama_native_basic"))

    out = await collect(adapter_for(ep.spec, ep.base_url).stream_chat(http, ep, chat(), 10))

    assert out.error is None and out.text == "Why did the llama cross the road?"
    sent = fake.requests[-1]
    assert (sent.path, sent.provider) == ("/api/chat", "llama")
    assert sent.headers["accept"] == "application/x-ndjson"
    assert "authorization" not in sent.headers  # llama: auth "none"


async def test_the_v1_base_url_keeps_the_openai_path(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    ep = endpoint(fake, "llama")  # the registry's /v1
    fake.enqueue(Scenario.transcript("ollama_basic"))
    out = await collect(adapter_for(ep.spec, ep.base_url).stream_chat(http, ep, chat(), 10))
    assert out.error is None and fake.requests[-1].path == "/v1/chat/completions"


# --- the request -----------------------------------------------------------------------------


async def sent_body(fake: FakeProvider, http: aiohttp.ClientSession, params: ChatParams) -> dict[str, object]:
    ep = endpoint(fake, "llama", path="")
    fake.enqueue(Scenario.transcript("ollama_native_basic"))
    out = await collect(OllamaAdapter().stream_chat(http, ep, params, 10))
    assert out.error is None, out.error
    body: dict[str, object] = fake.requests[-1].json
    return body


async def test_messages_options_and_images(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    params = chat(
        Message("system", "Be terse."),
        Message(
            "user",
            "What is this?",
            parts=(ImagePart(data=PNG, mime_type="image/png"), ImagePart(url=data_url)),
        ),
        Message("assistant", "A picture."),
        Message("user", "Thanks"),
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        stop=("\n\n", "User:"),
    )

    body = await sent_body(fake, http, params)

    encoded = base64.b64encode(PNG).decode()  # the data only: no data: prefix
    assert body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "What is this?", "images": [encoded, encoded]},
            {"role": "assistant", "content": "A picture."},
            {"role": "user", "content": "Thanks"},
        ],
        "stream": True,
        "options": {"temperature": 0.2, "top_p": 0.9, "num_predict": 64, "stop": ["\n\n", "User:"]},
    }


async def test_tool_calls_and_results_go_back_named(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    weather = ToolSpec(
        "get_weather", "The weather.", {"type": "object", "properties": {"city": {"type": "string"}}}
    )
    params = chat(
        Message("user", "Weather in Paris and Oslo?"),
        Message(
            "assistant",
            "",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
                ToolCall("call_2", "get_weather", '{"city":"Oslo"}'),
            ),
        ),
        Message("tool", "sunny", tool_call_id="call_1"),
        Message("tool", "snow", tool_call_id="call_2"),
        tools=(weather, ToolSpec("noop")),
        tool_choice=ToolChoice(mode="auto"),
    )

    body = await sent_body(fake, http, params)

    messages = body["messages"]
    assert isinstance(messages, list)
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"index": 1, "name": "get_weather", "arguments": {"city": "Oslo"}},
            },
        ],
    }
    assert messages[2:] == [
        {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_1"},
        {"role": "tool", "content": "snow", "tool_name": "get_weather", "tool_call_id": "call_2"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather.",
                "parameters": weather.parameters,
            },
        },
        {
            "type": "function",
            "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}},
        },
    ]


async def test_tool_choice_none_sends_no_tools(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    body = await sent_body(fake, http, chat(tools=(ToolSpec("noop"),), tool_choice=ToolChoice(mode="none")))
    assert "tools" not in body


@pytest.mark.parametrize(
    ("fmt", "sent"),
    [
        (ResponseFormat("json_object"), "json"),
        (
            ResponseFormat("json_schema", "x", {"type": "object", "required": ["a"]}),
            {"type": "object", "required": ["a"]},
        ),
        (ResponseFormat("text"), None),
    ],
)
async def test_structured_output_goes_in_format(
    fake: FakeProvider, http: aiohttp.ClientSession, fmt: ResponseFormat, sent: object
) -> None:
    body = await sent_body(fake, http, chat(response_format=fmt))
    assert body.get("format") == sent


@pytest.mark.parametrize(
    ("reasoning", "think"),
    [
        (Reasoning(effort="low"), "low"),
        (Reasoning(effort="high", include=True), "high"),
        (Reasoning(include=True), True),
        (Reasoning(budget_tokens=2048), True),
        (None, None),
    ],
)
async def test_reasoning_goes_in_think(
    fake: FakeProvider, http: aiohttp.ClientSession, reasoning: Reasoning | None, think: object
) -> None:
    body = await sent_body(fake, http, chat(reasoning=reasoning))
    assert body.get("think") == think


async def test_a_document_is_refused_before_any_request(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    ep = endpoint(fake, "llama", path="")
    params = chat(Message("user", "Summarise", parts=(DocumentPart(b"%PDF-1.7"),)))
    out = await collect(OllamaAdapter().stream_chat(http, ep, params, 10))
    assert isinstance(out.error, errors.CapabilityUnsupported)
    assert out.error.provider == "llama" and "messages[0].parts[0].document" in out.error.message
    assert fake.requests == []


# --- the answer -----------------------------------------------------------------------------


async def run(
    fake: FakeProvider, http: aiohttp.ClientSession, scenario: Scenario, params: ChatParams | None = None
) -> Collected:
    ep = endpoint(fake, "llama", path="")
    fake.enqueue(scenario)
    return await collect(OllamaAdapter().stream_chat(http, ep, params or chat(), 10))


async def test_ids_sent_by_newer_servers_are_kept(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    calls = [
        {"id": "call_a1b2c3", "function": {"index": 0, "name": "lookup", "arguments": {"q": "x", "n": 2}}},
        {"id": "call_d4e5f6", "function": {"index": 1, "name": "noop", "arguments": {}}},
    ]
    out = await run(
        fake,
        http,
        ndjson(line(message={"role": "assistant", "content": "", "tool_calls": calls}, done=False), done()),
    )
    assert out.finished is not None
    assert [(c.id, c.name, c.arguments) for c in out.finished.tool_calls] == [
        ("call_a1b2c3", "lookup", '{"q":"x","n":2}'),
        ("call_d4e5f6", "noop", "{}"),
    ]
    assert out.assembled() == [(c.id, c.name, c.arguments) for c in out.finished.tool_calls]
    assert out.finished.finish_reason is FinishReason.TOOL_CALLS


async def test_thinking_is_reasoning_never_text(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    scenario = Scenario.transcript("ollama_native_thinking")
    hidden = await run(fake, http, scenario, chat())
    assert hidden.text == "Bonjour !" and hidden.reasoning == []
    assert hidden.finished is not None and hidden.finished.reasoning == ""
    shown = await run(fake, http, scenario, chat(reasoning=Reasoning(include=True)))
    assert shown.text == "Bonjour !"
    assert (
        shown.finished is not None
        and shown.finished.reasoning == transcripts.load("ollama_native_thinking").expect["reasoning"]
    )
    assert shown.order.index("text") > shown.order.index("reasoning")


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("load", FinishReason.OTHER),
        ("", FinishReason.STOP),
    ],
)
async def test_done_reasons(
    fake: FakeProvider, http: aiohttp.ClientSession, reason: str, finish: FinishReason
) -> None:
    final = done(reason, prompt_eval_count=3, eval_count=1) if reason else line(done=True, eval_count=1)
    out = await run(
        fake, http, ndjson(line(message={"role": "assistant", "content": "Hi"}, done=False), final)
    )
    assert out.finished is not None and out.finished.finish_reason is finish


async def test_counts_left_out_when_zero(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    """Ollama's Metrics are omitempty: a done line with only eval_count had a zero prompt count."""
    out = await run(
        fake,
        http,
        ndjson(line(message={"role": "assistant", "content": "Hi"}, done=False), done(eval_count=2)),
    )
    assert out.finished is not None and out.finished.usage == Usage(0, 2, 2)


async def test_a_whole_json_answer_is_the_same_answer(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    answer = json.loads(done(prompt_eval_count=26, eval_count=6))
    answer["message"]["content"] = "Hello! How are you today?"
    out = await run(fake, http, Scenario.json(answer, route="chat"))
    assert out.error is None and out.text == "Hello! How are you today?"
    assert out.finished is not None and out.finished.usage == Usage(26, 6, 32)


async def test_lines_labelled_application_json_are_still_lines(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = transcripts.load("ollama_native_basic").body
    out = await run(
        fake, http, Scenario(body=body, headers={"Content-Type": "application/json"}, chunks=(3,))
    )
    assert out.error is None and out.text == "Why did the llama cross the road?"
    assert out.finished is not None and out.finished.usage == Usage(31, 9, 40)


async def test_a_last_line_without_its_lf_ends_the_answer(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    body = transcripts.load("ollama_native_basic").body.rstrip(b"\n")
    out = await run(fake, http, ndjson(body))
    assert out.error is None and out.finished is not None and out.finished.usage == Usage(31, 9, 40)


@pytest.mark.parametrize("how", ["end_at", "truncate_at"])
async def test_a_body_cut_inside_the_done_line_is_truncated(
    fake: FakeProvider, http: aiohttp.ClientSession, how: str
) -> None:
    body = transcripts.load("ollama_native_basic").body
    cut = len(body) - 20  # inside the done line's metrics
    out = await run(fake, http, Scenario.transcript("ollama_native_basic", chunks=(5,), **{how: cut}))
    assert isinstance(out.error, errors.UpstreamStreamTruncated)
    assert out.error.reason == "UPSTREAM_STREAM_TRUNCATED" and out.text == "Why did the llama cross the road?"


async def test_a_line_past_the_limit_is_too_large(fake: FakeProvider) -> None:
    limits = UpstreamLimits(max_event_bytes=4 * KIB, max_call_seconds=10.0)
    async with new_http_session(4, policy=EndpointPolicy.parse("127.0.0.0/8"), limits=limits) as bounded:
        huge = line(message={"role": "assistant", "content": "x" * (8 * KIB)}, done=False)
        out = await run(fake, bounded, ndjson(huge, done()))
    assert isinstance(out.error, errors.UpstreamResponseTooLarge)


# --- errors --------------------------------------------------------------------------------


async def test_model_not_found_maps_as_on_the_v1_path(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    """Ollama's native 404 body is {"error": "..."}; /v1 wraps the same text OpenAI-style."""
    native = await run(
        fake, http, Scenario.json({"error": 'model "llama9" not found, try pulling it first'}, status=404)
    )
    ep = endpoint(fake, "llama")
    fake.enqueue(Scenario.canned("llama", "not_found"))
    openai = await collect(adapter_for(ep.spec, ep.base_url).stream_chat(http, ep, chat(), 10))
    assert type(native.error) is type(openai.error) is errors.InvalidRequest
    assert native.error is not None and native.error.reason == "INVALID_REQUEST"
    assert "try pulling it first" in native.error.message


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, errors.ProviderUnavailable),
        (503, errors.ProviderUnavailable),
        (401, errors.ProviderKeyInvalid),
        (400, errors.InvalidRequest),
    ],
)
async def test_http_errors_go_through_the_table(
    fake: FakeProvider, http: aiohttp.ClientSession, status: int, error: type[errors.RmllmError]
) -> None:
    out = await run(fake, http, Scenario.json({"error": "something went wrong"}, status=status))
    assert type(out.error) is error and out.error.provider == "llama"


async def test_a_mid_stream_error_line_ends_the_stream(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    out = await run(fake, http, Scenario.transcript("ollama_native_midstream_error"))
    assert isinstance(out.error, errors.ProviderError) and out.finished is None
    assert out.text == "Why did the" and "out of memory" in out.error.message


async def test_a_synthetic_stream_from_the_fake(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    out = await run(fake, http, Scenario.stream(("Hello", " there")))
    assert out.text == "Hello there" and out.finished is not None
    assert out.finished.usage.output_tokens == 2
    failed = await run(fake, http, Scenario.stream(("a", "b", "c"), fail_after=1))
    assert failed.text == "a" and isinstance(failed.error, errors.ProviderError)


# --- TestKey and ListModels at a native base URL ------------------------------------------------


@pytest.mark.parametrize("path", ["", "/api", "/ollama"])
async def test_probe_and_listing_read_api_tags(
    fake: FakeProvider, http: aiohttp.ClientSession, path: str
) -> None:
    ep = endpoint(fake, "llama", path=path)
    adapter = adapter_for(ep.spec, ep.base_url)

    probe = await adapter.probe_key(http, ep, 10)
    models = await adapter.list_models(http, ep, 10)

    assert probe.outcome is ProbeOutcome.VALID
    root = path if path.endswith("/api") else path + "/api"
    assert [r.path for r in fake.requests] == [f"{root}/tags", f"{root}/tags"]
    assert [m.id for m in models] == ["llama3.2:latest", "llama3.1:8b", "qwen2.5:7b"]


async def test_probe_of_an_unreachable_native_endpoint(http: aiohttp.ClientSession) -> None:
    closed = Endpoint(LLAMA, "http://127.0.0.1:9", Secret(""))
    probe = await adapter_for(LLAMA, closed.base_url).probe_key(http, closed, 5)
    assert probe.outcome is ProbeOutcome.UNREACHABLE
