"""``rmllm-vault``: serve the vault, and operate it (users, tokens, rewrap, audit).

Every command reads the same settings as ``serve`` (data directory, database URL,
seed) and brings the schema up to date first. Errors are one line on stderr with a
non-zero exit status, never a traceback. ``users create`` and ``tokens create``
print the new token once, as the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable

import peewee as pw

from rmllm_common.cli import add_serve_flags, child_argv, configure_logging, fail, run_serve, worker_count
from rmllm_common.errors import AlreadyExists, RmllmError
from rmllm_common.workers import supervise
from vault_service import accounts, audit, migrations, rewrap
from vault_service.crypto import Keyring
from vault_service.database import Database, DatabaseUrlError
from vault_service.server import build_server, prepare_database
from vault_service.settings import DEFAULT_LISTEN, SettingsError, VaultSettings

log = logging.getLogger(__name__)


def _when(micros: int | None) -> str:
    if micros is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(micros / 1_000_000))


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", metavar="DIR", help="state directory (default: RMLLM_DATA_DIR or XDG state)"
    )
    top = argparse.ArgumentParser(
        prog="rmllm-vault", description="RealMultiLLM vault: encrypted key custody."
    )
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the VaultService gRPC server")
    add_serve_flags(serve, DEFAULT_LISTEN)

    users = commands.add_parser(
        "users", help="create, list, disable, enable and delete users"
    ).add_subparsers(dest="action", required=True)
    create = users.add_parser("create", parents=[common], help="create a user and print its first token")
    create.add_argument("name")
    create.add_argument(
        "--exist-ok",
        action="store_true",
        help="if the user exists, print a new token for it instead of failing",
    )
    users.add_parser("list", parents=[common], help="list users")
    disable = users.add_parser("disable", parents=[common], help="disable a user (its tokens stop working)")
    disable.add_argument("name")
    enable = users.add_parser(
        "enable", parents=[common], help="enable a disabled user (its tokens work again)"
    )
    enable.add_argument("name")
    delete = users.add_parser(
        "delete", parents=[common], help="delete a user with its stored keys and tokens (audited)"
    )
    delete.add_argument("name")

    tokens = commands.add_parser("tokens", help="create, list and revoke user tokens").add_subparsers(
        dest="action", required=True
    )
    token_create = tokens.add_parser("create", parents=[common], help="create another token for a user")
    token_create.add_argument("user")
    token_list = tokens.add_parser("list", parents=[common], help="list tokens (never their values)")
    token_list.add_argument("user", nargs="?")
    revoke = tokens.add_parser("revoke", parents=[common], help="revoke a token by its id (tok_...)")
    revoke.add_argument("token_id")

    commands.add_parser("rewrap", parents=[common], help="re-encrypt every stored key under the current seed")
    audit_cmd = commands.add_parser("audit", help="check and read the audit log").add_subparsers(
        dest="action", required=True
    )
    audit_cmd.add_parser("verify", parents=[common], help="verify the audit hash chain")
    audit_list = audit_cmd.add_parser("list", parents=[common], help="print audit rows, oldest first")
    audit_list.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="rows from this moment on: a duration back from now (90s, 30m, 2h, 7d) or an ISO 8601 "
        "date or time (2026-12-01, 2026-12-01T15:00:00Z)",
    )
    audit_list.add_argument("--user", metavar="NAME", help="rows about this user (also a deleted one)")
    audit_list.add_argument(
        "--action",
        dest="action_glob",
        metavar="GLOB",
        help="rows whose action matches, e.g. config.resolve or 'user.*'",
    )
    audit_list.add_argument(
        "--format", choices=("table", "json"), default="table", help="json: one JSON object per line"
    )
    return top


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(text: str) -> int:
    """``--since``: a duration back from now, or an ISO 8601 date or time; in microseconds."""
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return int((time.time() - seconds) * 1_000_000)
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration (30m, 2h, 7d) or an ISO 8601 date or time: {text[:40]!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1_000_000)


def _print_token(token_id: str, token: str) -> None:
    print(f"token id: {token_id}")
    print("the token below is shown only now; store it somewhere safe:")
    print(token)


def _users(args: argparse.Namespace, db: Database) -> int:
    if args.action == "create":
        try:
            user, token_id, token = db.call(accounts.create_user, db, args.name)
        except AlreadyExists:
            if not args.exist_ok:
                raise
            token_id, token = db.call(accounts.create_token, db, args.name)
            print(f"user {args.name} exists; created another token for it")
        else:
            print(f"created user {user.user_name} ({user.user_id})")
        _print_token(token_id, token.reveal())
    elif args.action == "enable":
        user_id = db.call(accounts.enable_user, db, args.name)
        print(f"enabled user {args.name} ({user_id})")
    elif args.action == "delete":
        deleted = db.call(accounts.delete_user, db, args.name)
        print(
            f"deleted user {args.name} ({deleted.user_id}), its {deleted.configs} stored keys "
            f"and {deleted.tokens} tokens"
        )
    elif args.action == "list":
        print(f"{'NAME':<24} {'ID':<22} {'STATUS':<9} {'TOKENS':>6}  CREATED")
        for info in db.call(accounts.list_users, db):
            status = "disabled" if info.disabled else "active"
            created = _when(info.create_time)
            print(f"{info.name:<24} {info.user_id:<22} {status:<9} {info.active_tokens:>6}  {created}")
    else:
        user_id = db.call(accounts.disable_user, db, args.name)
        print(f"disabled user {args.name} ({user_id})")
    return 0


def _tokens(args: argparse.Namespace, db: Database) -> int:
    if args.action == "create":
        token_id, token = db.call(accounts.create_token, db, args.user)
        print(f"created a token for {args.user}")
        _print_token(token_id, token.reveal())
    elif args.action == "list":
        print(f"{'ID':<18} {'USER':<24} {'CREATED':<21} STATUS")
        for info in db.call(accounts.list_tokens, db, args.user):
            status = f"revoked {_when(info.revoke_time)}" if info.revoke_time else "active"
            print(f"{info.token_id:<18} {info.user_name:<24} {_when(info.create_time):<21} {status}")
    else:
        db.call(accounts.revoke_token, db, args.token_id)
        print(f"revoked {args.token_id}")
    return 0


def _rewrap(settings: VaultSettings, db: Database) -> int:
    keyring = Keyring(settings.seed, settings.old_seeds)
    counts = db.call(rewrap.rewrap, db, keyring)
    print(
        f"rewrap: {counts.rewrapped} re-encrypted, {counts.current} already under key "
        f"{keyring.current.key_id}, {counts.failed} failed"
    )
    if counts.failed:
        return fail(
            f"{counts.failed} keys could not be decrypted (see the log for their key ids); "
            "add their seeds to RMLLM_VAULT_OLD_SEEDS and run rewrap again"
        )
    return 0


def _audit_list(args: argparse.Namespace, db: Database) -> int:
    users = db.call(audit.user_ids, db, args.user) if args.user else None
    if users is not None and not users:
        return fail(f"no user named {args.user!r}, now or in the audit log")
    rows = db.call(lambda: list(audit.rows(db, since=args.since, action=args.action_glob, users=users)))
    if args.format == "json":
        for row in rows:
            print(json.dumps({**dataclasses.asdict(row), "time": _when_precise(row.time)}))
        return 0
    print(f"{'SEQ':>6}  {'TIME':<24} {'ACTOR':<22} {'ACTION':<17} {'PROVIDER':<10} {'OUTCOME':<20} DETAIL")
    for row in rows:
        print(
            f"{row.seq:>6}  {_when_precise(row.time):<24} {row.actor:<22} {row.action:<17} "
            f"{row.provider or '-':<10} {row.outcome:<20} {row.detail}"
        )
    return 0


def _when_precise(micros: int) -> str:
    moment = datetime.datetime.fromtimestamp(micros / 1_000_000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _audit(args: argparse.Namespace, db: Database) -> int:
    if args.action == "list":
        return _audit_list(args, db)
    report = db.call(audit.verify, db)
    for problem in report.problems:
        print(problem)
    print(f"audit: {report.rows} rows, head row {report.head_seq}, head hash {report.head_hash}")
    if not report.ok:
        return fail(f"the audit log has been tampered with: {len(report.problems)} problems found")
    print("audit: the hash chain is intact")
    return 0


def _operate(args: argparse.Namespace) -> int:
    with_secrets = args.command == "rewrap"
    settings = VaultSettings.from_env(
        os.environ, data_dir=args.data_dir, with_secrets=with_secrets, generate_seed=False
    )
    db = Database(settings.effective_database_url)
    try:
        migrations.migrate(db)
        handlers: dict[str, Callable[[], int]] = {
            "users": lambda: _users(args, db),
            "tokens": lambda: _tokens(args, db),
            "rewrap": lambda: _rewrap(settings, db),
            "audit": lambda: _audit(args, db),
        }
        return handlers[args.command]()
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rmllm-vault``."""
    args = parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", None), os.environ)
    try:
        if args.command == "serve":
            settings = VaultSettings.from_env(os.environ, listen=args.listen, data_dir=args.data_dir)
            workers = worker_count(args.workers, os.environ)
            if workers > 1:
                prepare_database(settings)
                argv = child_argv("vault_service.cli", args)
                return supervise(argv, settings.listen, workers, settings.grace_seconds)
            return run_serve(settings, settings.listen, settings.grace_seconds, build_server)
        return _operate(args)
    except (SettingsError, DatabaseUrlError, migrations.SchemaTooNew, PermissionError, ValueError) as exc:
        return fail(str(exc))
    except RmllmError as exc:
        return fail(exc.message)
    except pw.OperationalError as exc:
        return fail(
            f"the database is not usable: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
        )


if __name__ == "__main__":
    sys.exit(main())
