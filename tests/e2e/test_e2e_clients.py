"""The four clients against the live stack give the same answer: the Python client,
the rmllm CLI, the Node client and grpcurl, each streaming the same recorded
transcript through LLM service → vault → fake provider."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from fakes import transcripts
from fakes.harness import KEYS
from testkit import grpcurl
from testkit.stack import ROOT, Stack

from clients import Client

TRANSCRIPT = "openai_basic"
NODE_DIR = ROOT / "clients" / "node"


@pytest.fixture(scope="module")
def node_ready() -> None:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def queue_answer(stack: Stack) -> None:
    # route "chat": probes and listings (the Node example runs TestKey) are not consumed by it
    stack.enqueue({"transcript": TRANSCRIPT, "chunks": [5], "route": "chat"})


def test_four_clients_same_text_and_usage(stack: Stack, token: str, node_ready: None) -> None:
    want = transcripts.load(TRANSCRIPT).expect
    results: dict[str, tuple[str, list[int]]] = {}
    base_url = stack.base_url("openai")

    # 1. Python: store the key, then stream.
    with Client(token, llm_target=stack.llm.address, vault_target=stack.vault.address) as client:
        client.put_config("openai", KEYS["openai"], base_url=base_url)
        queue_answer(stack)
        with client.stream_chat("openai", "What is the capital of France?") as stream:
            text = "".join(stream)
        usage = stream.result.usage
        results["python"] = (text, [usage.input_tokens, usage.output_tokens, usage.total_tokens])

    # 2. The rmllm CLI.
    queue_answer(stack)
    cli = subprocess.run(
        [sys.executable, "-m", "clients.cli", "chat", "-p", "openai", "What is the capital of France?"],
        capture_output=True,
        text=True,
        check=False,
        env=stack.client_env(token),
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    summary = re.search(r"(\d+) in / (\d+) out tokens", cli.stderr)
    assert summary, cli.stderr
    tokens_in, tokens_out = int(summary.group(1)), int(summary.group(2))
    results["cli"] = (cli.stdout.rstrip("\n"), [tokens_in, tokens_out, tokens_in + tokens_out])

    # 3. The Node client's example: stores the key, runs TestKey, streams a chat.
    queue_answer(stack)
    node = subprocess.run(
        ["node", "example.js"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={
            **stack.client_env(token),
            "RMLLM_EXAMPLE_PROVIDER": "openai",
            "RMLLM_EXAMPLE_KEY": KEYS["openai"],
            "RMLLM_EXAMPLE_BASE_URL": base_url,
            "RMLLM_EXAMPLE_PROMPT": "What is the capital of France?",
        },
    )
    assert node.returncode == 0, node.stderr
    final = json.loads(node.stdout.strip().splitlines()[-1])
    node_usage = final["usage"]
    results["node"] = (
        final["text"],
        [int(node_usage[k]) for k in ("input_tokens", "output_tokens", "total_tokens")],
    )
    assert "TEST_KEY_REASON_VALID" in node.stderr

    # 4. grpcurl.
    queue_answer(stack)
    body = {
        "provider": "openai",
        "messages": [{"role": "ROLE_USER", "content": "What is the capital of France?"}],
    }
    reply = grpcurl.run(stack.llm.address, "realmultillm.llm.v1.LLMService/Chat", data=body, token=token)
    assert reply.returncode == 0, reply.stderr
    chat = json.loads(reply.stdout)
    results["grpcurl"] = (
        chat["content"],
        [int(chat["usage"][k]) for k in ("inputTokens", "outputTokens", "totalTokens")],
    )

    expected = (want["text"], want["usage"])
    assert results == dict.fromkeys(results, expected)
