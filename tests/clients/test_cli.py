"""The ``rmllm`` command in-process (``main(argv)``, captured stdio) against the fake services."""

from __future__ import annotations

import io
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from testkit.fake_grpc import TOKEN, FakeServers

import clients
import clients.errors
from clients.cli import main
from rmllm_common import errors

SECRET = "sk-good-VERYSECRETVALUE-7f3a"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def cli_env(fake: FakeServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the command at the fakes, with a config file path of its own (not ~/.config)."""
    for name in ("RMLLM_TLS", "RMLLM_TLS_CA", "RMLLM_TLS_CERT", "RMLLM_TLS_KEY", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RMLLM_TARGET", fake.llm_target)
    monkeypatch.setenv("RMLLM_VAULT_TARGET", fake.vault_target)
    monkeypatch.setenv("RMLLM_TOKEN", TOKEN)
    path = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("RMLLM_CONFIG", str(path))
    return path


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = ""
) -> Run:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


@pytest.fixture
def rmllm(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Run]:
    def call(*argv: str, stdin: str = "") -> Run:
        return run(capsys, monkeypatch, *argv, stdin=stdin)

    return call


def one_line(text: str) -> bool:
    return text.count("\n") == 1 and text.endswith("\n") and "Traceback" not in text


def test_keys_set_reads_the_key_from_stdin(rmllm: Callable[..., Run], fake: FakeServers) -> None:
    result = rmllm("keys", "set", "openai", "--model", "gpt-x", "--max-tokens", "50", stdin=SECRET + "\n")
    assert result.code == 0
    assert result.out == "stored the openai key ending …7f3a\n"
    assert SECRET not in result.out + result.err
    assert fake.state.keys["openai"] == SECRET
    stored = fake.state.configs["openai"]
    assert (stored.settings.default_model, stored.settings.max_tokens) == ("gpt-x", 50)


def test_keys_set_refuses_a_key_in_argv_without_echoing_it(
    rmllm: Callable[..., Run], fake: FakeServers
) -> None:
    for argv in (["keys", "set", "openai", SECRET], ["test-key", "openai", SECRET], ["login", SECRET]):
        result = rmllm(*argv)
        assert result.code == 2
        assert one_line(result.err) and "never read from the command line" in result.err
        assert SECRET not in result.out + result.err
    assert fake.state.calls == []


def test_keys_list_and_rm(rmllm: Callable[..., Run], fake: FakeServers) -> None:
    empty = rmllm("keys", "list")
    assert (empty.code, empty.out) == (0, "")
    assert "rmllm keys set PROVIDER" in empty.err
    fake.store("openai", "sk-good-abcd1234", default_model="gpt-4o")
    fake.store("claude", "sk-ant-zzzz9876")
    listed = rmllm("keys", "list")
    lines = listed.out.splitlines()
    assert lines[0].split() == ["PROVIDER", "KEY", "MODEL", "UPDATED", "USES", "ACTIVE"]
    assert lines[1].split()[:3] == ["anthropic", "…9876", "(default)"]
    assert lines[2].split()[:3] == ["openai", "…1234", "gpt-4o"]
    assert lines[2].split()[-2:] == ["3", "yes"]
    removed = rmllm("keys", "rm", "openai-api")
    assert (removed.code, removed.out) == (0, "removed the openai key\n")
    missing = rmllm("keys", "rm", "openai")
    assert missing.code == 5
    assert missing.err == "rmllm: no openai key stored: run `rmllm keys set openai`\n"


def test_test_key(rmllm: Callable[..., Run], fake: FakeServers) -> None:
    good = rmllm("test-key", "openai", stdin=SECRET)
    assert (good.code, good.out) == (0, "openai: valid: openai accepted the key (42 ms)\n")
    assert fake.state.calls[-1][1].api_key == SECRET
    bad = rmllm("test-key", "openai", stdin="sk-wrong-1234\n")
    assert bad.code == 6 and bad.out.startswith("openai: invalid key:")
    stored = rmllm("test-key", "openai", "--stored")
    assert stored.code == 5 and "rmllm keys set openai" in stored.err
    fake.store("openai", SECRET)
    assert rmllm("test-key", "openai", "--stored").code == 0
    assert fake.state.calls[-1][1].api_key == ""
    assert rmllm("test-key", "openai").code == 2  # nothing on stdin


def test_chat_streams_then_summarises(rmllm: Callable[..., Run], fake: FakeServers) -> None:
    fake.store("openai", SECRET)
    result = rmllm("chat", "-p", "openai", "--system", "be brief", "hello there")
    assert result.code == 0
    assert result.out == "Hello world\n"
    assert result.err == "[openai gpt-4o-mini · 12 in / 34 out tokens · $0.000022 · stop]\n"
    request = fake.state.calls[-1][1]
    assert [(m.role, m.content) for m in request.messages] == [(1, "be brief"), (2, "hello there")]
    piped = rmllm("chat", "-p", "openai", "-m", "gpt-x", stdin="from stdin\n")
    assert piped.code == 0 and "gpt-x" in piped.err
    assert fake.state.calls[-1][1].messages[0].content == "from stdin\n"
    assert rmllm("chat", "-p", "openai", "-", stdin="   ").code == 2


def test_chat_stream_cut_short_keeps_the_text_and_fails(rmllm: Callable[..., Run], fake: FakeServers) -> None:
    fake.store("openai", SECRET)
    fake.state.stream_error = errors.UpstreamStreamTruncated("cut", provider="openai")
    result = rmllm("chat", "-p", "openai", "hi")
    assert result.code == 9
    assert result.out == "Hello world\n"
    assert result.err == "rmllm: the openai answer was cut short before it finished: try again\n"


def with_code(code: grpc.StatusCode, message: str) -> errors.RmllmError:
    """A server error with a code no server class has (no subclass: other tests list them all)."""
    error = errors.RmllmError(message, reason=code.name)
    error.code = code
    return error


# Every client error class -> a server error that becomes it, the exit code, and what
# the line says. The server's message is shown wherever the CLI has nothing better.
CLI_LINES: dict[type[clients.RmllmClientError], tuple[errors.RmllmError, int, str]] = {
    clients.InvalidRequest: (
        errors.invalid("temperature", "must be 0 to 2"),
        7,
        "temperature: must be 0 to 2",
    ),
    clients.UnknownProvider: (
        errors.UnknownProvider("x"),
        7,
        "unknown provider 'openai': see `rmllm providers`",
    ),
    clients.Unauthenticated: (
        errors.TokenInvalid("the token is unknown or revoked"),
        4,
        "the token was refused: the token is unknown or revoked; the token is the one in RMLLM_TOKEN",
    ),
    clients.UserDisabled: (
        errors.UserDisabled("the token's user is disabled; ask the operator"),
        4,
        "the token was refused: the token's user is disabled; ask the operator\n",
    ),
    clients.MalformedRequest: (errors.MalformedRequest("undecodable"), 7, "invalid request: undecodable"),
    clients.PermissionDenied: (
        errors.PermissionDenied("not for you", reason="SOMETHING_NEW"),
        4,
        "permission denied by the LLM service at",
    ),
    clients.MethodNotAllowed: (errors.MethodNotAllowed("open to no caller"), 4, ": open to no caller"),
    clients.ModelNotAllowed: (
        errors.ModelNotAllowed("gpt-4o is not allowed", provider="openai"),
        4,
        "not allowed: gpt-4o is not allowed",
    ),
    clients.BudgetExceeded: (errors.BudgetExceeded("the daily budget is used up"), 8, "see `rmllm usage`"),
    clients.UpstreamResponseTooLarge: (
        errors.UpstreamResponseTooLarge("over 2000000 characters", provider="openai"),
        8,
        "the openai answer passed this gateway's size limit: over 2000000 characters",
    ),
    clients.DatabaseUnavailable: (
        errors.DatabaseUnavailable("locked"),
        9,
        "cannot use its database right now: locked",
    ),
    clients.ServiceCredentialRequired: (errors.PermissionDenied("service only"), 4, ": service only"),
    clients.NotFound: (errors.NotFound("no such user", reason="USER_NOT_FOUND"), 5, "no such user"),
    clients.ConfigNotFound: (errors.NotFound("none"), 5, "no openai key stored: run `rmllm keys set openai`"),
    clients.AlreadyExists: (errors.AlreadyExists("twice"), 1, "ALREADY_EXISTS (ALREADY_EXISTS): twice"),
    clients.FailedPrecondition: (
        errors.FailedPrecondition("inactive", reason="CONFIG_INACTIVE"),
        1,
        "FAILED_PRECONDITION (CONFIG_INACTIVE): inactive",
    ),
    clients.KeyNotConfigured: (
        errors.KeyNotConfigured("x", provider="openai"),
        5,
        "no openai key stored: run `rmllm keys set openai`",
    ),
    clients.CapabilityUnsupported: (
        errors.CapabilityUnsupported("gpt-4o-mini does not take tools", provider="openai"),
        1,
        "rmllm: not supported: gpt-4o-mini does not take tools\n",
    ),
    clients.ProviderKeyInvalid: (
        errors.ProviderKeyInvalid("401", provider="openai"),
        6,
        "`rmllm keys set openai`",
    ),
    clients.ResourceExhausted: (errors.ResourceExhausted("too big", reason="TOO_BIG"), 8, "(too big)"),
    clients.RateLimited: (errors.RateLimited("60 a minute", retry_after=2.2), 8, "retry in 3s"),
    clients.ProviderRateLimited: (
        errors.ProviderRateLimited("429", provider="openai", retry_after=30),
        8,
        "openai is rate limiting this key: retry in 30s",
    ),
    clients.ProviderQuotaExhausted: (
        errors.ProviderQuotaExhausted("none", provider="openai"),
        8,
        "no quota or credit left",
    ),
    clients.Unavailable: (errors.Unavailable("x", reason="SOMETHING_NEW"), 9, "cannot reach the LLM service"),
    clients.VaultUnavailable: (
        errors.VaultUnavailable("down"),
        9,
        "cannot reach the vault: is it running? (`python3 scripts/dev.py up`)",
    ),
    clients.ProviderUnavailable: (
        errors.ProviderUnavailable("503", provider="openai"),
        9,
        "openai is unavailable right now (503): try again later",
    ),
    clients.UpstreamStreamTruncated: (
        errors.UpstreamStreamTruncated("cut", provider="openai"),
        9,
        "cut short",
    ),
    clients.DeadlineExceeded: (errors.DeadlineExceeded("late"), 10, "--timeout"),
    clients.Cancelled: (with_code(grpc.StatusCode.CANCELLED, "stopped"), 1, "CANCELLED (CANCELLED): stopped"),
    clients.Internal: (errors.Internal("request id r-9"), 11, "failed: request id r-9"),
    clients.KeyDecryptionFailed: (
        errors.KeyDecryptionFailed("seed", provider="openai"),
        11,
        "ask the operator",
    ),
    clients.Unimplemented: (errors.Unimplemented("later"), 1, "does not support this call"),
    clients.ProviderError: (errors.ProviderError("weird"), 1, "UNKNOWN (PROVIDER_ERROR): weird"),
    clients.RmllmClientError: (
        with_code(grpc.StatusCode.DATA_LOSS, "lost"),
        1,
        "DATA_LOSS (DATA_LOSS): lost",
    ),
}


def test_the_table_covers_every_client_error_class() -> None:
    classes = {
        cls
        for cls in vars(clients.errors).values()
        if isinstance(cls, type) and issubclass(cls, clients.RmllmClientError)
    }
    assert classes == set(CLI_LINES), "add the new error class to CLI_LINES"


@pytest.mark.parametrize("cls", list(CLI_LINES), ids=lambda cls: cls.__name__)
def test_each_error_class_is_one_line_with_its_exit_code(
    rmllm: Callable[..., Run], fake: FakeServers, cls: type[clients.RmllmClientError]
) -> None:
    error, code, message = CLI_LINES[cls]
    assert clients.errors.error_class(error.code, error.reason) is cls
    fake.state.fail("StreamChat", error)
    result = rmllm("chat", "-p", "openai", "hi")
    assert result.code == code
    assert one_line(result.err) and result.err.startswith("rmllm: ")
    assert message in result.err
    assert result.out == ""


def test_a_name_that_does_not_resolve_is_not_worth_waiting_for(
    rmllm: Callable[..., Run], fake: FakeServers
) -> None:
    dns = errors.ProviderUnavailable(
        "the name 'api.opanai.com' of the OpenAI endpoint does not resolve",
        provider="openai",
        metadata={"cause": "dns", "host": "api.opanai.com"},
    )
    fake.state.fail("StreamChat", dns)
    result = rmllm("chat", "-p", "openai", "hi")
    assert result.code == 9
    assert result.err == (
        "rmllm: openai cannot be reached: the name 'api.opanai.com' of the OpenAI endpoint does not resolve\n"
    )


def test_refused_token(rmllm: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMLLM_TOKEN", "rmk_wrong_token")
    result = rmllm("keys", "list")
    assert result.code == 4
    assert result.err == (
        "rmllm: the token was refused: missing or unknown token; "
        "the token is the one in RMLLM_TOKEN: set it to a valid token\n"
    )
    assert "rmk_wrong_token" not in result.err


def test_a_refused_token_from_the_file_or_login_gets_its_own_hint(
    rmllm: Callable[..., Run], cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RMLLM_TOKEN")
    cli_env.parent.mkdir()
    cli_env.write_text('token = "rmk_stale"\n')
    cli_env.chmod(0o600)
    stale = rmllm("keys", "list")
    assert (stale.code, stale.err) == (
        4,
        "rmllm: the token was refused: missing or unknown token; "
        f"the token is the one saved in {cli_env}: save a valid one with `rmllm login`\n",
    )
    # Inside `rmllm login` the pasted token is the only one in play: no hint about others.
    pasted = rmllm("login", stdin="rmk_pasted_wrong\n")
    assert (pasted.code, pasted.err) == (4, "rmllm: the token was refused: missing or unknown token\n")
    monkeypatch.setenv("RMLLM_TOKEN", TOKEN)  # set, and right: login still judges the pasted one
    pasted = rmllm("login", stdin="rmk_pasted_wrong\n")
    assert (pasted.code, pasted.err) == (4, "rmllm: the token was refused: missing or unknown token\n")


def test_unreachable_service_names_its_address(rmllm: Callable[..., Run]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    result = rmllm("--target", dead, "--timeout", "5", "providers")
    assert result.code == 9
    assert result.err == (
        f"rmllm: cannot reach the LLM service at {dead}: is it running? (`python3 scripts/dev.py up`)\n"
    )
    vault = rmllm("--vault-target", dead, "keys", "list")
    assert vault.code == 9 and f"the vault at {dead}" in vault.err


def test_providers_and_models_tables(rmllm: Callable[..., Run]) -> None:
    providers = rmllm("providers")
    lines = providers.out.splitlines()
    assert lines[0].split() == ["PROVIDER", "NAME", "ALIASES", "DEFAULT", "MODEL", "NEEDS", "KEY", "MODELS"]
    assert [line.split()[0] for line in lines[1:]] == ["anthropic", "llama", "openai"]
    models = rmllm("models", "claude")
    assert models.out.splitlines()[1].split() == [
        "claude-3-5-haiku-latest",
        "CLAUDE-3-5-HAIKU-LATEST",
        "128000",
        "0.15",
        "0.6",
    ]
    assert models.err == "1 anthropic models, from the registry (no live listing)\n"
    assert rmllm("models", "-p", "claude").out == models.out  # as `rmllm chat -p`
    assert rmllm("models", "--provider", "claude").out == models.out
    for wrong in (("models",), ("models", "claude", "-p", "openai")):
        refused = rmllm(*wrong)
        assert refused.code == 2 and "name one provider" in refused.err
    unknown = rmllm("models", "nope")
    assert unknown.code == 7 and "unknown provider 'nope'" in unknown.err


def test_token_from_the_config_file(
    rmllm: Callable[..., Run], cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RMLLM_TOKEN")
    missing = rmllm("keys", "list")
    assert (missing.code, missing.err) == (3, "rmllm: no token: set RMLLM_TOKEN or run `rmllm login`\n")
    cli_env.parent.mkdir()
    cli_env.write_text(f'token = "{TOKEN}"\n')
    cli_env.chmod(0o644)
    refused = rmllm("keys", "list")
    assert refused.code == 3
    assert refused.err == (
        f"rmllm: the config file {cli_env} can be read by other users: run `chmod 600 {cli_env}`\n"
    )
    cli_env.chmod(0o600)
    assert rmllm("keys", "list").code == 0
    cli_env.write_text('token = "x"\ncolour = "blue"\n')
    assert "unknown setting 'colour'" in rmllm("keys", "list").err


def test_login_verifies_then_writes_a_private_file(
    rmllm: Callable[..., Run], cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RMLLM_TOKEN")
    refused = rmllm("login", stdin="rmk_not_a_real_token\n")
    assert refused.code == 4 and not cli_env.exists()
    saved = rmllm("login", stdin=TOKEN + "\n")
    assert (saved.code, saved.out) == (0, f"token saved to {cli_env} (mode 0600)\n")
    assert TOKEN not in saved.out + saved.err
    assert stat.S_IMODE(cli_env.stat().st_mode) == 0o600
    assert cli_env.read_text() == f'token = "{TOKEN}"\n'
    assert rmllm("keys", "list").code == 0
    again = rmllm("login", "--no-verify", stdin='odd"token\\\n')
    assert again.code == 0
    assert cli_env.read_text() == 'token = "odd\\"token\\\\"\n'


class Terminal(io.StringIO):
    """A stdin that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def test_keys_set_on_a_terminal_uses_a_hidden_prompt(
    cli_env: Path, fake: FakeServers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return SECRET

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    monkeypatch.setattr("sys.stdin", Terminal("not read"))
    assert main(["keys", "set", "openai"]) == 0
    assert prompts == ["openai API key (input hidden): "]
    assert fake.state.keys["openai"] == SECRET
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


def test_ctrl_d_at_the_prompt_is_no_key(
    cli_env: Path, fake: FakeServers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def eof(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", eof)
    monkeypatch.setattr("sys.stdin", Terminal(""))
    assert main(["test-key", "openai"]) == 2
    assert capsys.readouterr().err.startswith("rmllm: no key given:")
    assert fake.state.calls == []


def test_keys_update_sends_only_the_flags_given(rmllm: Callable[..., Run], fake: FakeServers) -> None:
    fake.store("openai", SECRET, default_model="gpt-a", temperature=0.3)
    result = rmllm("keys", "update", "openai", "--model", "gpt-b", "--disable")
    assert (result.code, result.out) == (0, "updated the openai settings: inactive, gpt-b\n")
    assert list(fake.state.calls[-1][1].update_mask.paths) == ["is_active", "settings.default_model"]
    assert fake.state.configs["openai"].settings.temperature == 0.3
    assert rmllm("keys", "update", "openai", "--enable").out.startswith("updated the openai settings: active")
    nothing = rmllm("keys", "update", "openai")
    assert nothing.code == 2 and "nothing to change" in nothing.err
    missing = rmllm("keys", "update", "claude", "--max-tokens", "5")
    assert missing.code == 5 and "rmllm keys set anthropic" in missing.err


def test_chat_help_explains_provider_and_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Send a prompt to a provider and stream the answer" in text
    assert (
        "-p PROVIDER, --provider PROVIDER provider id or alias" in text and "(see `rmllm providers`)" in text
    )
    assert "-m MODEL, --model MODEL model id (see `rmllm models PROVIDER`)" in text


def test_chat_without_a_prompt_on_a_terminal_is_a_conversation(
    rmllm: Callable[..., Run],
    fake: FakeServers,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.store("openai", SECRET)
    fake.state.fail("StreamChat", errors.RateLimited("60 a minute", retry_after=1))
    typed = "lost turn\none\n\n/what\ntwo\n/reset\nthree\n"  # then Ctrl-D (end of input)
    monkeypatch.setattr("sys.stdin", Terminal(typed))
    code = main(["chat", "-p", "openai", "--system", "be brief"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == "> > Hello world\n> > > Hello world\n> > Hello world\n> \n"
    notes = captured.err.splitlines()
    assert (
        notes[0]
        == "rmllm: a conversation with openai: /reset forgets the conversation, /exit or Ctrl-D ends it"
    )
    assert notes[1].startswith("rmllm: rate limited (60 a minute)")  # the failed turn is not kept
    assert "unknown command '/what'" in notes[3]
    assert "forgotten" in notes[5]
    sent = [
        [(m.role, m.content) for m in request.messages]
        for method, request, _ in fake.state.calls
        if method == "StreamChat"
    ]
    system, user, assistant = 1, 2, 3
    assert sent == [
        [(system, "be brief"), (user, "lost turn")],
        [(system, "be brief"), (user, "one")],
        [(system, "be brief"), (user, "one"), (assistant, "Hello world"), (user, "two")],
        [(system, "be brief"), (user, "three")],  # after /reset
    ]


def test_a_conversation_ends_with_exit(
    fake: FakeServers, cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.store("openai", SECRET)
    monkeypatch.setattr("sys.stdin", Terminal("hi\n/exit\nnever sent\n"))
    assert main(["chat", "-p", "openai"]) == 0
    assert [method for method, _, _ in fake.state.calls].count("StreamChat") == 1
    assert capsys.readouterr().out == "> Hello world\n> "
