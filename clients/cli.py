"""``rmllm``: the command line for people (keys, test-key, chat, providers, models, usage, login).

Examples::

    rmllm login                          # paste the token from `rmllm-vault users create`
    rmllm keys set openai                # the key is read from a hidden prompt, or stdin
    echo "$KEY" | rmllm keys set anthropic --model claude-3-5-haiku-latest
    rmllm keys list
    rmllm keys update openai --model gpt-4o --disable
    rmllm test-key openai --stored
    rmllm chat -p openai "Write a haiku about gRPC"
    rmllm chat -p google --image chart.png --pdf report.pdf "Do these agree?"
    rmllm chat -p openai --tool weather.json --json-schema answer.json --reasoning high "..."
    rmllm chat -p openai                 # on a terminal: a conversation (/reset, /exit, Ctrl-D)
    echo "Summarise this" | rmllm chat -p claude --system "Be brief"
    rmllm providers; rmllm models google; rmllm models -p google
    rmllm usage --since 30d --by provider   # your calls, tokens and cost, and a per-day chart

Keys and tokens are never taken from the command line (where ``ps`` and shell
history would keep them): a hidden prompt when stdin is a terminal, else stdin.
Settings come from flags, ``RMLLM_TARGET`` / ``RMLLM_VAULT_TARGET`` /
``RMLLM_TOKEN`` or the 0600 config file (see ``clients.config``). Errors are one
line that says how to fix them; exit codes are in ``clients.cli_format``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import getpass
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from clients import cli_chat, cli_usage, config
from clients import cli_format as out
from clients.channels import DEFAULT_CHAT_TIMEOUT, DEFAULT_TIMEOUT
from clients.cli_chat import UsageError
from clients.cli_conversation import ChatOptions, Conversation, stream_answer
from clients.datatypes import TestKeyReason
from clients.errors import RmllmClientError
from clients.sync import Client

SECRET_COMMANDS = {("keys", "set"), ("test-key", None), ("login", None)}

TEST_KEY_EXIT = {
    TestKeyReason.VALID: out.EXIT_OK,
    TestKeyReason.INVALID_KEY: out.EXIT_KEY_INVALID,
    TestKeyReason.QUOTA_EXHAUSTED: out.EXIT_RATE_LIMITED,
    TestKeyReason.RATE_LIMITED: out.EXIT_RATE_LIMITED,
    TestKeyReason.UNREACHABLE: out.EXIT_UNAVAILABLE,
}


SECRET_PREFIXES = ("sk-", "rmk_", "AIza", "xai-", "ghp_", "github_pat_")


def looks_like_a_secret(word: str) -> bool:
    """A provider argument that is really a pasted key (so it must not be echoed or sent)."""
    return word.startswith(SECRET_PREFIXES) or len(word) > 64


def read_secret(label: str, stdin: TextIO) -> str:
    """A hidden prompt when stdin is a terminal, else all of stdin, stripped."""
    try:
        if stdin.isatty():
            return getpass.getpass(f"{label} (input hidden): ").strip()
        return stdin.read().strip()
    except EOFError:  # Ctrl-D at the prompt
        return ""
    except UnicodeDecodeError:
        raise UsageError(f"the {label} on stdin is not valid UTF-8") from None


def seconds(text: str) -> float:
    """A positive number of seconds (for --timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError("must be more than 0 and less than 86400 seconds")
    return value


EPILOG = """\
environment: RMLLM_TARGET, RMLLM_VAULT_TARGET, RMLLM_TOKEN, RMLLM_CONFIG (default
~/.config/realmultillm/config.toml, mode 0600), RMLLM_TLS_CA, RMLLM_TLS_CERT, RMLLM_TLS_KEY.
exit codes: 0 ok, 1 other error, 2 usage, 3 local configuration, 4 token refused,
5 no key stored, 6 key rejected, 7 invalid request, 8 rate limited, 9 unavailable,
10 timed out, 11 server error, 130 interrupted."""


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--target", default=default, help="LLM service address (default: $RMLLM_TARGET or 127.0.0.1:50051)"
    )
    parser.add_argument(
        "--vault-target",
        default=default,
        help="vault address (default: $RMLLM_VAULT_TARGET or 127.0.0.1:50052)",
    )
    parser.add_argument("--timeout", type=seconds, default=default, help="deadline of the call, in seconds")


def parser() -> argparse.ArgumentParser:
    """The command-line interface; --target, --vault-target and --timeout go anywhere."""
    root = argparse.ArgumentParser(
        prog="rmllm",
        description="RealMultiLLM: store provider keys, test them, and chat with any provider.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(root, None)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)  # after the command: overrides, else the root's
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = functools.partial(commands.add_parser, parents=[common])

    keys = add("keys", help="store, list and remove your provider keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    put = key_commands.add_parser(
        "set", parents=[common], help="store a key (read from a hidden prompt or stdin, never argv)"
    )
    put.add_argument("provider")
    put.add_argument("--base-url", help="endpoint override")
    put.add_argument("--model", help="default model for this provider")
    put.add_argument("--temperature", type=float, help="default temperature")
    put.add_argument("--max-tokens", type=int, help="default maximum tokens")
    key_commands.add_parser("list", parents=[common], help="list your stored keys")
    update = key_commands.add_parser(
        "update", parents=[common], help="change the settings of a stored key (never the key)"
    )
    update.add_argument("provider")
    update.add_argument("--base-url", help="endpoint override ('' for the provider's default)")
    update.add_argument("--model", help="default model ('' for the provider's default)")
    update.add_argument("--temperature", type=float, help="default temperature")
    update.add_argument("--max-tokens", type=int, help="default maximum tokens")
    active = update.add_mutually_exclusive_group()
    active.add_argument("--enable", dest="active", action="store_const", const=True, help="allow chats")
    active.add_argument(
        "--disable", dest="active", action="store_const", const=False, help="keep, but refuse chats"
    )
    remove = key_commands.add_parser("rm", parents=[common], help="remove a stored key")
    remove.add_argument("provider")

    test = add("test-key", help="check a key with the provider without storing it")
    test.add_argument("provider")
    test.add_argument("--stored", action="store_true", help="test the stored key instead of reading one")
    test.add_argument("--base-url", help="endpoint override for the test")

    chat = add(
        "chat",
        help="chat with a provider, streaming the answer",
        description="Send a prompt to a provider and stream the answer, then a summary line "
        "(tokens, cost, finish reason) on stderr. The prompt comes from the argument, else stdin; "
        "with neither, on a terminal, a conversation starts: each line is a turn, the history is "
        "kept, /reset forgets it, /exit or Ctrl-D ends it.",
        epilog="examples: rmllm chat -p openai 'Write a haiku'; "
        "echo 'Summarise this' | rmllm chat -p claude. "
        "`rmllm providers` lists the provider ids and aliases, `rmllm models PROVIDER` the models.",
    )
    chat.add_argument(
        "-p",
        "--provider",
        required=True,
        help="provider id or alias, e.g. openai, claude (see `rmllm providers`)",
    )
    chat.add_argument(
        "-m",
        "--model",
        help="model id (see `rmllm models PROVIDER`); default: the default model stored with your key, "
        "else the provider's",
    )
    chat.add_argument("--system", help="system instructions")
    chat.add_argument("--temperature", type=float, help="sampling temperature (the provider's range)")
    chat.add_argument("--max-tokens", type=int, help="the longest answer, in tokens")
    cli_chat.add_flags(chat)
    chat.add_argument("prompt", nargs="?", default="-", help="the prompt; '-' or omitted: read stdin")

    add("providers", help="list the providers")
    models = add("models", help="list the models of a provider")
    models.add_argument("provider", nargs="?", help="provider id or alias (see `rmllm providers`)")
    models.add_argument(
        "-p", "--provider", dest="provider_flag", metavar="PROVIDER", help="the same, as in `rmllm chat -p`"
    )
    usage = add("usage", help="your usage: calls, tokens and cost, with a per-day chart")
    usage.add_argument("--since", default="7d", help="an age (24h, 7d) or a UTC date; default 7d")
    usage.add_argument("--by", choices=["model", "provider", "day"], default="model", help="default model")
    usage.add_argument("--provider", default="", help="only this provider")
    login = add("login", help="save your token (read from a prompt or stdin) to the config file")
    login.add_argument(
        "--no-verify", action="store_true", help="save without checking the token with the vault"
    )
    return root


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse, refusing extra words on secret-reading commands without echoing them."""
    args, extra = parser().parse_known_args(argv)
    if args.command == "models":
        given = {name for name in (args.provider, args.provider_flag) if name}
        if len(given) != 1:
            raise UsageError(
                "name one provider: `rmllm models openai` or `rmllm models -p openai` (see `rmllm providers`)"
            )
        args.provider = given.pop()
    if extra:
        command = (args.command, getattr(args, "keys_command", None))
        if command in SECRET_COMMANDS:
            raise UsageError(
                "keys and tokens are never read from the command line (shell history keeps them): "
                "run the command without it and paste at the prompt, or pipe it on stdin"
            )
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    if looks_like_a_secret(getattr(args, "provider", None) or ""):
        raise UsageError(
            "that looks like a key or token, not a provider id: keys are never read from the command line; "
            "run `rmllm providers` for the ids"
        )
    return args


class Cli:
    """One run of the command, with its streams and settings."""

    def __init__(self, args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        self.args = args
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.settings = config.load(os.environ, llm_target=args.target, vault_target=args.vault_target)

    def client(self) -> Client:
        timeout = self.args.timeout
        return Client(
            self.settings.require_token(),
            llm_target=self.settings.llm_target,
            vault_target=self.settings.vault_target,
            tls=self.settings.tls_options(),
            timeout=timeout or DEFAULT_TIMEOUT,
            chat_timeout=timeout or DEFAULT_CHAT_TIMEOUT,
        )

    def print(self, text: str) -> None:
        print(text, file=self.stdout)

    def note(self, text: str) -> None:
        print(text, file=self.stderr)

    def run(self) -> int:
        handlers: dict[str, Callable[[], int]] = {
            "keys": self.keys,
            "test-key": self.test_key,
            "chat": self.chat,
            "providers": self.providers,
            "models": self.models,
            "usage": self.usage,
            "login": self.login,
        }
        return handlers[self.args.command]()

    def keys(self) -> int:
        args = self.args
        with self.client() as client:
            if args.keys_command == "list":
                configs = client.list_configs()
                if configs:
                    self.print(out.configs_table(configs))
                else:
                    self.note("no keys stored: add one with `rmllm keys set PROVIDER`")
            elif args.keys_command == "update":
                self.update(client)
            elif args.keys_command == "rm":
                self.print(f"removed the {client.delete_config(args.provider)} key")
            else:
                api_key = read_secret(f"{args.provider} API key", self.stdin)
                stored = client.put_config(
                    args.provider,
                    api_key,
                    base_url=args.base_url,
                    default_model=args.model,
                    temperature=args.temperature,
                    max_tokens=args.max_tokens,
                )
                hint = f" ending …{stored.key_hint}" if stored.key_hint else ""
                self.print(f"stored the {stored.provider} key{hint}")
        return out.EXIT_OK

    def update(self, client: Client) -> None:
        args = self.args
        given = {
            "base_url": args.base_url,
            "default_model": args.model,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens,
            "is_active": args.active,
        }
        changes: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        if not changes:
            raise UsageError(
                "nothing to change: give --model, --base-url, --temperature, --max-tokens, "
                "--enable or --disable"
            )
        updated = client.update_config(args.provider, **changes)
        state = "active" if updated.is_active else "inactive"
        model = updated.settings.default_model or "the provider's default model"
        self.print(f"updated the {updated.provider} settings: {state}, {model}")

    def test_key(self) -> int:
        args = self.args
        with self.client() as client:
            api_key = None if args.stored else read_secret(f"{args.provider} API key to test", self.stdin)
            if api_key == "":
                raise UsageError("no key given: paste one at the prompt or pipe it on stdin, or use --stored")
            result = client.test_key(args.provider, api_key, base_url=args.base_url)
        verdict = "valid" if result.valid else result.reason.value.replace("_", " ")
        self.print(f"{result.provider}: {verdict}: {result.message} ({result.latency_ms} ms)")
        return TEST_KEY_EXIT.get(result.reason, out.EXIT_ERROR)

    def chat(self) -> int:
        args = self.args
        if args.prompt == "-" and self.stdin.isatty():
            first, extra = cli_chat.chat_options(args, "")
            with self.client() as client:
                return Conversation(
                    client,
                    self.chat_options(extra),
                    self.stdin,
                    self.stdout,
                    self.stderr,
                    self.describe,
                    first_parts=first[0].parts,
                ).run()
        prompt = self.stdin.read() if args.prompt == "-" else args.prompt
        if not prompt.strip():
            raise UsageError("empty prompt: give one as an argument or on stdin")
        messages, extra = cli_chat.chat_options(args, prompt)
        with self.client() as client:
            answer = stream_answer(client, self.chat_options(extra), messages, self.stdout, self.stderr)
        return out.EXIT_OK if answer is not None else out.EXIT_INTERRUPTED

    def chat_options(self, extra: dict[str, Any]) -> ChatOptions:
        args = self.args
        return ChatOptions(
            args.provider,
            args.model,
            args.system,
            args.temperature,
            args.max_tokens,
            extra=extra,
            show_reasoning=args.show_reasoning,
        )

    def describe(self, error: RmllmClientError) -> str:
        """The one line for ``error``, its hint knowing where the token came from."""
        settings = self.settings
        return one_line(
            out.describe(
                error,
                getattr(self.args, "provider", None),
                credential_from=settings.credential_from,
                path=str(settings.path) if settings.path else "",
            )
        )

    def providers(self) -> int:
        with self.client() as client:
            self.print(out.providers_table(client.providers()))
        return out.EXIT_OK

    def models(self) -> int:
        with self.client() as client:
            models = client.models(self.args.provider)
        self.print(out.models_table(models))
        source = "listed live by the provider" if models.live else "from the registry (no live listing)"
        self.note(f"{len(models.models)} {models.provider} models, {source}")
        return out.EXIT_OK

    def usage(self) -> int:
        now = datetime.now(UTC)
        try:
            start = cli_usage.since(self.args.since, now)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        with self.client() as client:
            summary = client.usage_summary(start, now, provider=self.args.provider)
        self.print(f"usage since {start:%Y-%m-%d %H:%M} UTC, by {self.args.by}")
        self.print(cli_usage.usage_table(summary, self.args.by))
        self.print("")
        self.print(cli_usage.day_chart(summary, start, now))
        return out.EXIT_OK

    def login(self) -> int:
        token = read_secret("RealMultiLLM token", self.stdin)
        if not token:
            raise UsageError("no token given: paste the token from `rmllm-vault users create`")
        if not self.args.no_verify:
            self.settings = dataclasses.replace(self.settings, token=token, credential_from="login")
            with self.client() as client:
                client.list_configs()
        path = self.settings.path or config.config_path(os.environ)
        config.save_token(path, token)
        self.print(f"token saved to {path} (mode 0600)")
        return out.EXIT_OK


def one_line(text: str) -> str:
    """``text`` on one line: control characters and line breaks become single spaces."""
    return " ".join("".join(char if char.isprintable() else " " for char in text).split())


def fail(message: str, code: int) -> int:
    print(f"rmllm: {one_line(message)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rmllm``; returns the exit code."""
    provider: str | None = None
    cli: Cli | None = None
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        provider = getattr(args, "provider", None)
        cli = Cli(args, sys.stdin, sys.stdout, sys.stderr)
        return cli.run()
    except UsageError as exc:
        return fail(str(exc), out.EXIT_USAGE)
    except config.ConfigError as exc:
        return fail(str(exc), out.EXIT_CONFIG)
    except RmllmClientError as exc:
        line = cli.describe(exc) if cli is not None else out.describe(exc, provider)
        return fail(line, out.exit_code(exc))
    except KeyboardInterrupt:
        print("\nrmllm: interrupted", file=sys.stderr)
        return out.EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`rmllm chat ... | head`): nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return out.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
