"""``rmllm-llm``: serve the LLM service.

``rmllm-llm serve [--listen HOST:PORT] [--data-dir DIR] [--log-level LEVEL] [--workers N]`` reads
``LLMSettings`` from the flags and the environment, then runs one server process
until SIGTERM/SIGINT (in-flight calls get ``RMLLM_SHUTDOWN_GRACE_SECONDS`` to end),
on uvloop's event loop when it is installed (it is a dependency: less CPU per call).
With ``--workers N`` (default: the number of cores) it supervises N such processes
on one port (``rmllm_common.workers``, SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from llm_service.server import build_server
from llm_service.settings import DEFAULT_LISTEN, LLMSettings, SettingsError
from rmllm_common import logs
from rmllm_common.cli import add_serve_flags, fail, run_serve, supervise_workers


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    top = argparse.ArgumentParser(prog="rmllm-llm", description="RealMultiLLM LLM service.")
    commands = top.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the LLMService gRPC server")
    add_serve_flags(serve_cmd, DEFAULT_LISTEN)
    return top


def serve(settings: LLMSettings) -> int:
    """Run one server process with ``settings`` until a signal stops it."""
    return run_serve(
        settings,
        settings.listen,
        settings.grace_seconds,
        build_server,
        telemetry_settings=settings.telemetry,
        service_name="rmllm-llm",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rmllm-llm``."""
    args = parser().parse_args(argv)
    try:
        settings = LLMSettings.from_env(
            os.environ,
            listen=args.listen,
            data_dir=args.data_dir,
            log_level=args.log_level,
            workers=args.workers,
            metrics_listen=args.metrics_listen,
        )
        settings = dataclasses.replace(settings, reuse_port=args.shared_port)
    except (SettingsError, OSError) as exc:  # OSError: an unusable data directory
        return fail(str(exc))
    logs.configure(settings.log_level)
    if settings.workers > 1:
        return supervise_workers(
            "llm_service.cli",
            args,
            settings.listen,
            settings.workers,
            settings.grace_seconds,
            telemetry_settings=settings.telemetry,
        )
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
