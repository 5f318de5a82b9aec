"""The vault's cache-miss path under load: ``python -m bench.resolves [--calls N] [--concurrency C]``.

Starts a vault process (``--workers 1``, SQLite, fresh data directory; with
``--code-root DIR`` the vault of another checkout, for a before/after pair),
gives ``--users`` users an OpenAI key, and sends ``--calls`` ResolveCredentials
from ``--concurrency`` callers at once, each call a different user in turn (so no
two callers wait on one row). Printed as one JSON object: resolves per second,
the vault process's CPU per resolve (``/proc``), and the audit chain's state after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from bench import procstat
from bench.stack import ROOT, Proc, start
from rmllm_common.secret import Secret
from vault_service import accounts, audit, configs, migrations
from vault_service.crypto import Keyring, key_id_of
from vault_service.database import Database

SERVICE_TOKEN = "rms_" + secrets.token_urlsafe(32)


def start_vault(code_root: Path, env: dict[str, str]) -> Proc:
    """The vault of ``code_root`` (its output read all along: a full pipe would stall its log writer)."""
    args = ["vault_service.cli", "serve", "--listen", "127.0.0.1:0", "--workers", "1"]
    return start("vault", args, {"PYTHONPATH": str(code_root), **env}, source=code_root)


async def load(address: str, tokens: list[str], calls: int, concurrency: int) -> tuple[int, float]:
    channel = grpc.aio.insecure_channel(address)
    stub = vault_pb2_grpc.VaultServiceStub(channel)
    metadata = (("authorization", f"Bearer {SERVICE_TOKEN}"),)
    counter = iter(range(calls))
    ok = 0

    async def caller() -> None:
        nonlocal ok
        for i in counter:
            request = vault_pb2.ResolveCredentialsRequest(
                user_token=tokens[i % len(tokens)], provider="openai", request_id=f"bench-{i}"
            )
            await stub.ResolveCredentials(request, metadata=metadata, timeout=30)
            ok += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await channel.close()
    return ok, elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    seed = secrets.token_urlsafe(32)
    keyring = Keyring(Secret(seed))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'vault.sqlite3'}"
        db = Database(url)
        migrations.migrate(db)
        tokens = []
        for i in range(args.users):
            principal, _, token = db.call(accounts.create_user, db, f"bench{i}")
            blob = keyring.encrypt(Secret("sk-proj-" + secrets.token_hex(20)), principal.user_id, "openai")
            draft = configs.Draft(blob, key_id_of(blob), "…abcd", "", configs.Settings())
            db.call(configs.put, db, principal.user_id, "openai", draft, "bench-put")
            tokens.append(token.reveal())
        env = {
            "RMLLM_DATABASE_URL": url,
            "RMLLM_VAULT_SEED": seed,
            "RMLLM_SERVICE_TOKEN": SERVICE_TOKEN,
            "RMLLM_DATA_DIR": tmp,
        }
        vault = start_vault(Path(args.code_root), env)
        try:
            asyncio.run(load(vault.address, tokens, min(200, args.calls), args.concurrency))  # warm-up
            cpu = procstat.cpu_seconds([vault.pid])
            ok, elapsed = asyncio.run(load(vault.address, tokens, args.calls, args.concurrency))
            cpu = procstat.cpu_seconds([vault.pid]) - cpu
        finally:
            vault.stop()
        report = db.call(audit.verify, db)
        db.close()
    return {
        "code_root": str(args.code_root),
        "calls": ok,
        "concurrency": args.concurrency,
        "resolves_per_second": ok / elapsed,
        "vault_cpu_ms_per_resolve": cpu * 1e3 / max(1, ok),
        "audit_rows": report.rows,
        "audit_ok": report.ok,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.resolves", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--code-root", default=str(ROOT), help="the checkout whose vault to run")
    print(json.dumps(run(parser.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
