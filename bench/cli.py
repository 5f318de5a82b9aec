"""``python -m bench``: run the whole benchmark and write its results.

``python -m bench`` runs the full plan (several minutes) and writes
``docs/benchmarks/results.json``, ``results.md`` and ``results.png``;
``--quick`` runs a shorter plan; ``--plan smoke`` is the test suite's tiny one;
``--out DIR`` writes elsewhere. Progress goes to stderr. The exit status is 0
when the benchmark ran, whatever its verdicts: missed targets are reported in the
output, not as a failure of the command (``--strict`` makes them exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.plan import PLANS
from bench.report import markdown, plot, summarize, targets
from bench.runner import run_session
from bench.stack import ROOT


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m bench", description="RealMultiLLM overhead benchmark.")
    p.add_argument("--plan", choices=sorted(PLANS), default="full", help="how much to measure (default full)")
    p.add_argument(
        "--quick", action="store_const", const="quick", dest="plan", help="the same as --plan quick"
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="output directory")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--telemetry",
        action="store_true",
        help="only compare the LLM service's CPU per Chat with metrics and tracing off and on "
        "(writes telemetry.json)",
    )
    p.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="with --telemetry: also run the LLM service of this source tree (a checkout without the hooks)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write results.json, results.md and results.png."""
    args = parser().parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    if args.telemetry:
        from bench.telemetry import run_telemetry

        compared = run_telemetry(PLANS[args.plan], say, args.baseline_src)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "telemetry.json").write_text(json.dumps(compared, indent=1, sort_keys=True) + "\n")
        say(f"telemetry: {json.dumps(compared['summary'])}")
        return 0
    results = run_session(PLANS[args.plan], say)
    summary = summarize(results)
    verdicts = targets(results, summary)
    results["summary"] = summary
    results["targets"] = verdicts
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (out / "results.md").write_text(markdown(results, summary, verdicts))
    plot(summary, out / "results.png")
    missed = [v["target"] for v in verdicts if not v["met"]]
    say(f"wrote {out}/results.{{json,md,png}}; targets missed: {len(missed)} of {len(verdicts)}")
    for name in missed:
        say(f"MISSED: {name}")
    return 1 if args.strict and missed else 0
