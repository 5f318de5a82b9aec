"""The Node.js client (clients/node) against the fake services: `npm ci`, then example.js."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

from rmllm_common import errors

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
KEY = "sk-good-NODESECRET-9b1c"


@pytest.fixture(scope="session")
def node_ready() -> str:
    """Install the pinned packages from the lockfile, once per session; the node binary."""
    node = shutil.which("node") or "/usr/bin/node"
    npm = shutil.which("npm") or "/usr/bin/npm"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return node


def node_env(fake: FakeServers, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RMLLM_")}
    return {
        **base,
        "RMLLM_TARGET": fake.llm_target,
        "RMLLM_VAULT_TARGET": fake.vault_target,
        "RMLLM_TOKEN": TOKEN,
        **extra,
    }


def run_node(node: str, args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, *args], cwd=NODE_DIR, env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )


def test_example_stores_tests_and_streams(node_ready: str, fake: FakeServers) -> None:
    env = node_env(
        fake,
        RMLLM_EXAMPLE_PROVIDER="claude",
        RMLLM_EXAMPLE_KEY=KEY,
        RMLLM_EXAMPLE_BASE_URL="http://127.0.0.1:9/v1",
        RMLLM_EXAMPLE_PROMPT="say hello",
    )
    result = run_node(node_ready, ["example.js"], env)
    assert result.returncode == 0, result.stderr
    text, line = result.stdout.splitlines()
    assert text == "Hello world"
    assert json.loads(line) == {
        "text": "Hello world",
        "finish_reason": "FINISH_REASON_STOP",
        "usage": {
            "input_tokens": 12,
            "output_tokens": 34,
            "total_tokens": 46,
            "cost_usd": 0.000022,
            "cost": "$0.000022",
        },
        "model": "claude-3-5-haiku-latest",
        "provider": "anthropic",
    }
    assert result.stderr.splitlines() == [
        "stored the anthropic key ending …9b1c",
        "test-key: TEST_KEY_REASON_VALID: anthropic accepted the key",
    ]
    assert KEY not in result.stdout + result.stderr
    assert fake.state.methods() == ["PutProviderConfig", "TestKey", "StreamChat"]
    assert fake.state.keys["anthropic"] == KEY
    assert fake.state.configs["anthropic"].base_url == "http://127.0.0.1:9/v1"
    _put, test, chat = (request for _, request, _ in fake.state.calls)
    assert test.api_key == ""  # the stored key is tested
    assert [(m.role, m.content) for m in chat.messages] == [(2, "say hello")]
    assert {md["authorization"] for _, _, md in fake.state.calls} == {f"Bearer {TOKEN}"}
    assert all(md["user-agent"].startswith("rmllm-node/") for _, _, md in fake.state.calls)


def test_example_reports_a_refused_token(node_ready: str, fake: FakeServers) -> None:
    env = node_env(fake, RMLLM_TOKEN="rmk_wrong", RMLLM_EXAMPLE_KEY=KEY)
    result = run_node(node_ready, ["example.js"], env)
    assert result.returncode == 1
    # The server's x-request-id rides in the error, so "send me the request id" works.
    assert re.fullmatch(
        r"example: UNAUTHENTICATED TOKEN_INVALID: missing or unknown token \[request id [0-9a-f]{16}\]\n",
        result.stderr,
    ), result.stderr
    assert result.stdout == ""


PROBE = """
const { makeClients } = require('./index');
const rmllm = makeClients({ llmTarget: process.env.RMLLM_TARGET, vaultTarget: process.env.RMLLM_VAULT_TARGET,
                            token: process.env.RMLLM_TOKEN });
const out = {};
const grab = (name) => (err) => { out[name] = { code: err.codeName, reason: err.reason,
  provider: err.provider, retryAfter: err.retryAfter, fieldViolations: err.fieldViolations }; };
(async () => {
  const hi = [{ role: 'ROLE_USER', content: 'hi' }];
  await rmllm.chat({ provider: 'openai', messages: hi }).catch(grab('chat'));
  await rmllm.putProviderConfig({ provider: 'nope', api_key: 'sk-x-123456789' }).catch(grab('put'));
  out.providers = (await rmllm.listProviders()).providers.map((p) => p.id);
  const config = (await rmllm.putProviderConfig({ provider: 'openai', api_key: 'sk-good-123456789' })).config;
  out.created = typeof config.create_time.seconds;
  const updated = await rmllm.updateProviderConfig({ config: { provider: 'openai', is_active: false },
                                                     update_mask: { paths: ['is_active'] } });
  out.active = updated.config.is_active;
  const events = [];
  for await (const event of rmllm.streamChat({ provider: 'openai', messages: hi })) {
    events.push(event);
  }
})().catch(grab('stream')).finally(() => { rmllm.close(); console.log(JSON.stringify(out)); });
"""


def test_node_errors_are_typed(node_ready: str, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.fail("Chat", errors.ProviderRateLimited("429", provider="openai", retry_after=1.5))
    fake.state.fail("ListProviders", errors.Unavailable("blip"))  # retried by the service config
    result = run_node(node_ready, ["-e", PROBE], node_env(fake))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["chat"] == {
        "code": "RESOURCE_EXHAUSTED",
        "reason": "PROVIDER_RATE_LIMITED",
        "provider": "openai",
        "retryAfter": 1.5,
        "fieldViolations": [],
    }
    assert out["put"]["reason"] == "UNKNOWN_PROVIDER"
    assert out["put"]["fieldViolations"] == [{"field": "provider", "description": "unknown provider 'nope'"}]
    assert out["providers"] == ["anthropic", "llama", "openai"]
    assert out["created"] == "number"  # google.protobuf.Timestamp loaded, int64 as a number
    assert out["active"] is False
    assert out["stream"]["reason"] == "KEY_NOT_CONFIGURED"  # the config is now inactive
    assert fake.state.methods().count("ListProviders") == 2
    assert list(fake.state.calls[-2][1].update_mask.paths) == ["is_active"]


BREAK_EARLY = """
const { makeClients } = require('./index');
const rmllm = makeClients({ llmTarget: process.env.RMLLM_TARGET, vaultTarget: process.env.RMLLM_VAULT_TARGET,
                            token: process.env.RMLLM_TOKEN });
(async () => {
  const messages = [{ role: 'ROLE_USER', content: 'x' }];
  for await (const event of rmllm.streamChat({ provider: 'openai', messages })) {
    console.log(JSON.stringify(event));
    break;  // stop after the first delta: the call must be cancelled
  }
  await new Promise((resolve) => setTimeout(resolve, 200));  // let a late CANCELLED status arrive
})().finally(() => rmllm.close());
"""


def test_node_stream_stopped_early_is_cancelled(node_ready: str, fake: FakeServers) -> None:
    fake.store("openai", "sk-good-1234")
    fake.state.stream_hang = True
    result = run_node(node_ready, ["-e", BREAK_EARLY], node_env(fake))
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"delta":"Hel"}\n'
    assert result.stderr == ""
    assert fake.wait_cancelled()


TOOL_LOOP = r"""
const { makeClients, tool, fromStruct } = require('./index');
(async () => {
  const rmllm = makeClients({ llmTarget: process.env.RMLLM_TARGET, token: process.env.RMLLM_TOKEN });
  const weather = tool({ name: 'get_weather', description: 'The weather now',
    parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } },
                  required: ['city'], additionalProperties: false } });
  const events = [];
  try {
    for await (const event of rmllm.streamChat({ provider: 'openai', tools: [weather],
        tool_choice: { mode: 'TOOL_CHOICE_MODE_REQUIRED' },
        reasoning: { effort: 'REASONING_EFFORT_LOW', include_reasoning: true },
        messages: [{ role: 'ROLE_USER', content: 'weather?' }] })) {
      const d = event.done;
      if (d) events.push({ done: { tool_calls: d.tool_calls, reasoning: d.reasoning,
        provider_state: d.provider_state.toString('utf8'), finish_reason: d.finish_reason } });
      else events.push(event);
    }
    const done = events[events.length - 1].done;
    const reply = await rmllm.chat({ provider: 'openai', tools: [weather], messages: [
      { role: 'ROLE_USER', content: 'weather?' },
      { role: 'ROLE_ASSISTANT', tool_calls: done.tool_calls,
        provider_state: Buffer.from(done.provider_state) },
      ...done.tool_calls.map((c) => ({ role: 'ROLE_TOOL', tool_call_id: c.id, content: '12C' })) ] });
    events.push({ unary: reply.tool_calls.length, schema: fromStruct(weather.parameters) });
    process.stdout.write(JSON.stringify(events) + '\n');
  } finally {
    rmllm.close();
  }
})().catch((err) => { process.stderr.write(`${err.reason}: ${err.message}\n`); process.exitCode = 1; });
"""


def test_node_stream_events_for_reasoning_and_tool_calls(node_ready: str, fake: FakeServers) -> None:
    from realmultillm.llm.v1 import llm_pb2

    fake.store("openai", "sk-good-1234")
    fake.state.reasoning = ["Think ", "once."]
    fake.state.tool_calls = [llm_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')]
    fake.state.provider_state = b'{"v":1,"format":"openai"}'
    result = run_node(node_ready, ["-e", TOOL_LOOP], node_env(fake))
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert [next(iter(e)) for e in events] == [
        "reasoning",
        "reasoning",
        "delta",
        "delta",
        "delta",
        "toolCall",
        "toolCall",
        "done",
        "unary",
    ]
    pieces = [e["toolCall"] for e in events if "toolCall" in e]
    assert (pieces[0]["index"], pieces[0]["id"], pieces[0]["name"]) == (0, "call_1", "get_weather")
    assert "".join(p["arguments_delta"] for p in pieces) == '{"city": "Paris"}'
    done = events[-2]["done"]
    assert done["tool_calls"] == [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert done["reasoning"] == "Think once."
    assert done["provider_state"] == '{"v":1,"format":"openai"}'
    assert done["finish_reason"] == "FINISH_REASON_TOOL_CALLS"
    assert events[-1] == {
        "unary": 1,
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
    stream_request, chat_request = fake.state.calls[-2][1], fake.state.calls[-1][1]
    assert stream_request.tools[0].parameters["required"] == ["city"]
    assert stream_request.tool_choice.mode == llm_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert stream_request.reasoning.include_reasoning
    assert chat_request.messages[1].provider_state == b'{"v":1,"format":"openai"}'
    assert chat_request.messages[2].tool_call_id == "call_1"


def test_node_format_usd_matches_the_python_client(node_ready: str) -> None:
    from clients import format_usd

    values = [5.1e-06, 5.0999999999999995e-06, 0.0, 0.5, 12.345, 1e-10, 0.000022, 3.0, 123456.789]
    script = (
        "const { formatUsd } = require('./index');"
        f"process.stdout.write(JSON.stringify({values!r}.map(formatUsd)));"
    )
    result = subprocess.run(
        [node_ready, "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [format_usd(value) for value in values]
    assert json.loads(result.stdout)[:2] == ["$0.0000051", "$0.0000051"]


def test_the_node_client_spreads_calls_over_every_replica(
    node_ready: str, replicas: list[FakeServers]
) -> None:
    script = """
const { makeClients } = require('./index');
(async () => {
  const rmllm = makeClients({ token: process.env.RMLLM_TOKEN, llmTarget: process.env.RMLLM_TARGET,
                              vaultTarget: process.env.RMLLM_VAULT_TARGET });
  for (let i = 0; i < 20; i++) {
    await rmllm.chat({ provider: 'openai', messages: [{ role: 'ROLE_USER', content: 'Hi' }] });
  }
  rmllm.close();
  console.log(JSON.stringify({ ok: true }));
})().catch((err) => { console.error(err); process.exit(1); });
"""
    env = node_env(replicas[0], RMLLM_TARGET=",".join(fake.llm_target for fake in replicas))
    result = run_node(node_ready, ["-e", script], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True}
    assert all(fake.state.methods().count("Chat") > 0 for fake in replicas)
