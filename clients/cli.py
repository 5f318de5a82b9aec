"""``rmllm``: the command line for people (keys, test-key, chat, providers)."""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    return argparse.ArgumentParser(prog="rmllm", description="RealMultiLLM command line.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rmllm``."""
    parser().parse_args(argv)
    print("rmllm: no commands yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
