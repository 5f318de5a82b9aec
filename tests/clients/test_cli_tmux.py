"""``rmllm chat`` with no prompt, in a real terminal: a conversation, driven through tmux.

tmux gives the command a real pseudo-terminal (so ``isatty`` is true and ``input``
edits lines), types into it and reads the screen back. ``dev.py test`` installs tmux
from the distribution when it is missing; without it these tests skip and say why.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.fake_grpc import TOKEN, FakeServers

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-good-TMUXSECRET-0c1d"
TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed (python3 scripts/dev.py test installs it with apt-get)"
)


class Terminal:
    """One tmux server (its own socket) running one command in a 200x50 window."""

    def __init__(self, socket: Path, command: str, env: dict[str, str]) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-S", str(socket)]
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        script = f"cd {shlex.quote(str(ROOT))} && env {exports} {command}; echo EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "50", script)

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "t")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)
        self.tmux("send-keys", "-t", "t", "Enter")

    def key(self, name: str) -> None:
        self.tmux("send-keys", "-t", "t", name)

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> str:
        """The screen once ``text`` shows ``count`` times (polled, with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} x{count} never showed; the screen:\n{screen}")
            time.sleep(0.1)

    def wait_for_prompt(self, after: str, timeout: float = 120) -> None:
        """Until the last line is a fresh, empty prompt and the line above it holds ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line.rstrip() for line in self.screen().rstrip().splitlines()]
            if len(lines) >= 2 and lines[-1] == ">" and after in lines[-2]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no fresh prompt after {after!r}; the screen:\n" + "\n".join(lines))
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False, timeout=30)


@pytest.fixture
def terminal(fake: FakeServers, tmp_path: Path) -> Iterator[Terminal]:
    fake.store("openai", SECRET)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "RMLLM_TARGET": fake.llm_target,
        "RMLLM_VAULT_TARGET": fake.vault_target,
        "RMLLM_TOKEN": TOKEN,
        "RMLLM_CONFIG": str(tmp_path / "config.toml"),
        "PYTHONUNBUFFERED": "1",
    }
    command = f"{shlex.quote(sys.executable)} -m clients.cli chat -p openai --system 'be brief'"
    term = Terminal(tmp_path / "tmux.sock", command, env)
    try:
        yield term
    finally:
        term.close()


def sent(fake: FakeServers) -> list[list[tuple[int, str]]]:
    return [
        [(m.role, m.content) for m in request.messages]
        for method, request, _ in fake.state.calls
        if method == "StreamChat"
    ]


SYSTEM, USER, ASSISTANT = 1, 2, 3
SUMMARY = "[openai gpt-4o-mini · 12 in / 34 out tokens · $0.000022 · stop]"


def test_a_conversation_keeps_its_history_resets_and_ends_with_ctrl_d(
    terminal: Terminal, fake: FakeServers
) -> None:
    terminal.wait_for("/exit or Ctrl-D ends it")
    terminal.type("one")
    terminal.wait_for(SUMMARY)
    terminal.type("two")
    terminal.wait_for(SUMMARY, 2)
    terminal.type("/reset")
    terminal.wait_for("the conversation is forgotten")
    terminal.type("three")
    terminal.wait_for(SUMMARY, 3)
    terminal.key("C-d")
    screen = terminal.wait_for("EXIT=0")
    assert "> one\nHello world\n" in screen and "Traceback" not in screen
    assert sent(fake) == [
        [(SYSTEM, "be brief"), (USER, "one")],
        [(SYSTEM, "be brief"), (USER, "one"), (ASSISTANT, "Hello world"), (USER, "two")],
        [(SYSTEM, "be brief"), (USER, "three")],
    ]


def test_ctrl_c_stops_an_answer_and_the_conversation_goes_on_until_exit(
    terminal: Terminal, fake: FakeServers
) -> None:
    terminal.wait_for("/exit or Ctrl-D ends it")
    fake.state.stream_hang = True  # one delta, then nothing until cancelled
    terminal.type("wait")
    terminal.wait_for("> wait\nHel")  # the first delta
    terminal.key("C-c")
    terminal.wait_for("rmllm: interrupted: the chat was cancelled")
    assert fake.state.stream_cancelled.wait(30)
    fake.state.stream_hang = False
    terminal.type("again")
    terminal.wait_for(SUMMARY)
    # Ctrl-C at the prompt drops the line typed so far, and the conversation goes on.
    terminal.tmux("send-keys", "-t", "t", "-l", "never sent")
    terminal.wait_for("> never sent")
    terminal.key("C-c")
    # Typed before the interrupt is handled, "/exit" could still land in the dropped line.
    terminal.wait_for_prompt(after="never sent")
    terminal.type("/exit")
    terminal.wait_for("EXIT=0")
    # The cancelled turn is not part of the history; the dropped line was never sent.
    assert sent(fake)[-1] == [(SYSTEM, "be brief"), (USER, "again")]
    assert len(sent(fake)) == 2
