"""``rmllm-llm``: serve the LLM service."""

from __future__ import annotations

import argparse
import os
import sys

from llm_service.server import build_server
from llm_service.settings import DEFAULT_LISTEN, LLMSettings, SettingsError
from rmllm_common.cli import add_serve_flags, configure_logging, fail, run_serve


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    top = argparse.ArgumentParser(prog="rmllm-llm", description="RealMultiLLM LLM service.")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the LLMService gRPC server")
    add_serve_flags(serve, DEFAULT_LISTEN)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rmllm-llm``."""
    args = parser().parse_args(argv)
    configure_logging(args.log_level, os.environ)
    try:
        settings = LLMSettings.from_env(os.environ, listen=args.listen, data_dir=args.data_dir)
    except (SettingsError, PermissionError) as exc:
        return fail(str(exc))
    return run_serve(settings, settings.listen, settings.grace_seconds, build_server)


if __name__ == "__main__":
    sys.exit(main())
