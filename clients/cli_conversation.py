"""``rmllm chat``: stream one answer, or hold a multi-turn conversation on a terminal.

``stream_answer`` sends the messages, writes the deltas to stdout as they arrive,
the tool calls (as JSON) after them, the reasoning (with ``--show-reasoning``, dimmed
on a terminal) and the summary line to stderr. ``Conversation`` is what ``rmllm chat`` without a prompt
does on a terminal: each line typed is sent with the whole history (the system
message and the earlier turns), and its answer joins the history. ``/reset``
forgets the history, ``/exit`` or Ctrl-D at the prompt ends the conversation. Ctrl-C
stops the answer being streamed (the turn is not kept) or, at the prompt, drops the
line. A turn that fails prints its one-line error and is not kept; the
conversation goes on. The workload flags (``clients.cli_chat``) apply to every turn;
attachments go with the conversation's first message.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from clients import cli_chat
from clients import cli_format as out
from clients.datatypes import Message, Part, Role
from clients.errors import RmllmClientError
from clients.sync import Client

HELP = "/reset forgets the conversation, /exit or Ctrl-D ends it"


@dataclass
class ChatOptions:
    """What every turn sends besides the messages."""

    provider: str
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # tools, response format, reasoning
    show_reasoning: bool = False


def stream_answer(
    client: Client,
    options: ChatOptions,
    prompt: str | Sequence[Message],
    stdout: TextIO,
    stderr: TextIO,
) -> str | None:
    """Stream one answer to ``stdout`` and its summary to ``stderr``; the answer's text,
    or None when Ctrl-C cancelled it. Errors are raised as ``RmllmClientError``."""
    stream = client.stream_chat(
        options.provider,
        prompt,
        model=options.model,
        system=options.system,
        temperature=options.temperature,
        max_tokens=options.max_tokens,
        **options.extra,
    )
    if options.show_reasoning:
        terminal = stderr.isatty()

        def write_reasoning(piece: str) -> None:
            stderr.write(cli_chat.dimmed(piece, terminal))
            stderr.flush()

        stream.on_reasoning = write_reasoning
    try:
        for delta in stream:
            stdout.write(delta)
            stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()
        print("rmllm: interrupted: the chat was cancelled", file=stderr)
        return None
    finally:
        if stream.text and not stream.text.endswith("\n"):
            stdout.write("\n")
        stdout.flush()
    result = stream.result
    if result.tool_calls:
        print(cli_chat.tool_calls_json(result.tool_calls), file=stdout)
    if stream.reasoning and options.show_reasoning:
        stderr.write("\n")
    print(out.summary(result), file=stderr)
    return stream.text


@dataclass
class Conversation:
    """A conversation on a terminal; ``run`` returns the exit code."""

    client: Client
    options: ChatOptions
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    describe: Callable[[RmllmClientError], str]
    first_parts: Sequence[Part] = ()
    history: list[Message] = field(default_factory=list)

    def note(self, text: str) -> None:
        print(f"rmllm: {text}", file=self.stderr, flush=True)

    def read(self, prompt: str) -> str:
        """One line typed at the prompt; EOFError on Ctrl-D."""
        if self.stdin is sys.stdin:
            return input(prompt)  # line editing, where readline is loaded
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line

    def run(self) -> int:
        if self.stdin is sys.stdin and sys.stdin.isatty():
            with contextlib.suppress(ImportError):
                importlib.import_module("readline")  # line editing and history at the prompt
        model = f" ({self.options.model})" if self.options.model else ""
        self.note(f"a conversation with {self.options.provider}{model}: {HELP}")
        while True:
            try:
                text = self.read("> ").strip()
            except EOFError:
                self.stdout.write("\n")
                return out.EXIT_OK
            except KeyboardInterrupt:
                self.stdout.write("\n")
                continue
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return out.EXIT_OK
            if text == "/reset":
                self.history.clear()
                self.note("the conversation is forgotten; the next message starts a new one")
                continue
            if text.startswith("/"):
                self.note(f"unknown command {text.split()[0]!r}: {HELP}")
                continue
            self.turn(text)

    def turn(self, text: str) -> None:
        """Send ``text`` with the history; keep both only when the answer completes."""
        parts = () if self.history else self.first_parts
        messages = [*self.history, Message(Role.USER, text, parts=parts)]
        try:
            answer = stream_answer(self.client, self.options, messages, self.stdout, self.stderr)
        except RmllmClientError as error:
            self.note(self.describe(error))
            return
        if answer is not None:
            self.history = [*messages, Message(Role.ASSISTANT, answer)]
