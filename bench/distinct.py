"""Cache-miss throughput: many distinct users calling Chat at once, the credential cache off.

``python -m bench.distinct [--users 1000] [--seconds 8] [--rounds 3] [--baseline-src DIR]``

Issue 15's target: with 1,000 distinct users calling at once and the cache off (every
Chat a vault resolve: a decryption, a use count and an audit row), at least twice the
Chat/s of the code before it. One fake provider (fast mode); for this tree, and with
``--baseline-src`` for another checkout (e.g. ``git archive <commit> | tar -x -C DIR``),
a vault on its own fresh SQLite database holding ``--users`` users, each with an
OpenAI key whose base URL is the fake, and an LLM service with the cache off. The load
generator runs ``--users`` concurrent callers, caller i calling as user i, over 8
connections; the sides alternate, ``--rounds`` times. Printed as JSON: per side the
median Chat/s, the CPU per Chat of the LLM service and the vault (``/proc``), errors,
and the ratio of this tree's Chat/s to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.resolves import SERVICE_TOKEN, start_vault
from bench.runner import LoadGen
from bench.stack import ROOT, Proc, Stack, start
from rmllm_common.secret import Secret
from vault_service import accounts, configs, migrations
from vault_service.crypto import Keyring, key_id_of
from vault_service.database import Database


def fill(directory: Path, users: int, base_url: str) -> tuple[str, str, list[str]]:
    """A fresh database with ``users`` users, each with an OpenAI key at ``base_url``.

    Returns the database URL, the seed that encrypted the keys, and the users' tokens.
    """
    seed = secrets.token_urlsafe(32)
    keyring = Keyring(Secret(seed))
    url = f"sqlite:///{directory / 'vault.sqlite3'}"
    db = Database(url)
    migrations.migrate(db)
    tokens = []
    for i in range(users):
        principal, _, token = db.call(accounts.create_user, db, f"distinct{i}")
        blob = keyring.encrypt(Secret("sk-proj-" + secrets.token_hex(20)), principal.user_id, "openai")
        draft = configs.Draft(blob, key_id_of(blob), "…abcd", base_url, configs.Settings())
        db.call(configs.put, db, principal.user_id, "openai", draft, "bench-put")
        tokens.append(token.reveal())
    db.close()
    return url, seed, tokens


def start_side(name: str, code_root: Path, directory: Path, users: int, fake: Proc) -> dict[str, Any]:
    """The vault and the cache-off LLM service of ``code_root``, on a database of their own."""
    directory.mkdir(mode=0o700)
    url, seed, tokens = fill(directory, users, f"http://{fake.address}/v1")
    common = {
        "PYTHONPATH": str(code_root),
        "RMLLM_DATA_DIR": str(directory),
        "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
        "RMLLM_LOG_LEVEL": "info",
    }
    vault = start_vault(code_root, {**common, "RMLLM_DATABASE_URL": url, "RMLLM_VAULT_SEED": seed})
    llm_env = {
        **common,
        "RMLLM_VAULT_ADDR": vault.address,
        "RMLLM_CREDENTIAL_CACHE_SECONDS": "0",
        "RMLLM_CHAT_RATE_PER_MINUTE": "0",
        "RMLLM_ALLOW_CUSTOM_BASE_URL": "1",
        "RMLLM_ALLOWED_ENDPOINT_NETWORKS": "127.0.0.0/8",
    }
    args = ["llm_service.cli", "serve", "--listen", "127.0.0.1:0", "--workers", "1"]
    llm = start(f"llm-{name}", args, llm_env, source=code_root)
    return {"vault": vault, "llm": llm, "tokens": tokens}


def run(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """Start the sides, alternate the runs, return the medians."""
    with tempfile.TemporaryDirectory(prefix="rmllm-bench-distinct-") as tmp:
        stack = Stack(Path(tmp))
        sides: dict[str, dict[str, Any]] = {}
        gen: LoadGen | None = None
        try:
            fake = stack.start_fake("fake")
            roots = {"current": ROOT}
            if args.baseline_src:
                roots["baseline"] = Path(args.baseline_src).resolve()
            for name, root in roots.items():
                say(f"{name}: {args.users} users in a fresh database, a vault and a cache-off LLM service")
                sides[name] = start_side(name, root, Path(tmp) / name, args.users, fake)
            gen = LoadGen()
            jobs = {
                name: {
                    "kind": "chat",
                    "tokens": side["tokens"],
                    "address": side["llm"].address,
                    "channels": 8,
                    "concurrency": args.users,
                }
                for name, side in sides.items()
            }
            for job in jobs.values():  # warm-up: connections, and one resolve per user's row
                gen.run({**job, "requests": args.users, "seconds": 30.0})
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
            for round_no in range(args.rounds):
                for name, side in sides.items():
                    pids = {"llm": [side["llm"].pid], "vault": [side["vault"].pid]}
                    before = {k: procstat.cpu_seconds(p) for k, p in pids.items()}
                    result = gen.run({**jobs[name], "requests": 1_000_000, "seconds": args.seconds})
                    after = {k: procstat.cpu_seconds(p) for k, p in pids.items()}
                    ok = max(1, int(result["ok"]))
                    row = {
                        "chats_per_second": float(result["rps"]),
                        "p50_ms": float(result["p50_ms"]),
                        "errors": float(result["errors"]),
                        **{f"cpu_{k}_ms": (after[k] - before[k]) * 1e3 / ok for k in pids},
                    }
                    rows[name].append(row)
                    say(
                        f"round {round_no} {name:<8} {row['chats_per_second']:7.1f} Chat/s  "
                        f"p50 {row['p50_ms']:7.1f} ms  cpu ms/Chat: llm {row['cpu_llm_ms']:.3f} "
                        f"vault {row['cpu_vault_ms']:.3f}  errors {int(row['errors'])}"
                    )
        finally:
            if gen is not None:
                gen.close()
            for side in sides.values():
                side["llm"].stop()
                side["vault"].stop()
            stack.stop()
    out: dict[str, Any] = {"users": args.users, "concurrency": args.users}
    for name, runs in rows.items():
        out[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if "baseline" in out:
        out["throughput_ratio"] = out["current"]["chats_per_second"] / max(
            1e-9, out["baseline"]["chats_per_second"]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.distinct", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000, help="distinct users, one caller each (1000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run (8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the sides (3)")
    parser.add_argument("--baseline-src", default="", help="another checkout to compare with")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench.distinct {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    print(json.dumps(run(args, say), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
