"""``rmllm-vault``: serve the vault, and operate it (users, tokens, rewrap, audit)."""

from __future__ import annotations

import argparse
import os
import sys

from rmllm_common.cli import add_serve_flags, configure_logging, fail, run_serve
from vault_service.server import build_server
from vault_service.settings import DEFAULT_LISTEN, SettingsError, VaultSettings


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    top = argparse.ArgumentParser(
        prog="rmllm-vault", description="RealMultiLLM vault: encrypted key custody."
    )
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the VaultService gRPC server")
    add_serve_flags(serve, DEFAULT_LISTEN)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rmllm-vault``."""
    args = parser().parse_args(argv)
    configure_logging(args.log_level, os.environ)
    try:
        settings = VaultSettings.from_env(os.environ, listen=args.listen, data_dir=args.data_dir)
    except (SettingsError, PermissionError) as exc:
        return fail(str(exc))
    return run_serve(settings, settings.listen, settings.grace_seconds, build_server)


if __name__ == "__main__":
    sys.exit(main())
