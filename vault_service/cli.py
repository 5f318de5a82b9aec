"""``rmllm-vault``: serve the vault, and operate it (users, tokens, rewrap, audit).

Every command reads the same settings as ``serve`` (data directory, database URL,
seed) and brings the schema up to date first. Errors are one line on stderr with a
non-zero exit status, never a traceback. ``users create`` and ``tokens create``
print the new token once, as the last line of stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

import peewee as pw

from rmllm_common.cli import add_serve_flags, child_argv, fail, run_serve
from rmllm_common.errors import RmllmError
from rmllm_common.logs import configure as configure_logging
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

    users = commands.add_parser("users", help="create, list and disable users").add_subparsers(
        dest="action", required=True
    )
    create = users.add_parser("create", parents=[common], help="create a user and print its first token")
    create.add_argument("name")
    users.add_parser("list", parents=[common], help="list users")
    disable = users.add_parser("disable", parents=[common], help="disable a user (its tokens stop working)")
    disable.add_argument("name")

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
    audit_cmd = commands.add_parser("audit", help="check the audit log").add_subparsers(
        dest="action", required=True
    )
    audit_cmd.add_parser("verify", parents=[common], help="verify the audit hash chain")
    return top


def _print_token(token_id: str, token: str) -> None:
    print(f"token id: {token_id}")
    print("the token below is shown only now; store it somewhere safe:")
    print(token)


def _users(args: argparse.Namespace, db: Database) -> int:
    if args.action == "create":
        user, token_id, token = db.call(accounts.create_user, db, args.name)
        print(f"created user {user.user_name} ({user.user_id})")
        _print_token(token_id, token.reveal())
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


def _audit(db: Database) -> int:
    report = db.call(audit.verify, db)
    for problem in report.problems:
        print(problem)
    print(f"audit: {report.rows} rows, head row {report.head_seq}, head hash {report.head_hash}")
    if not report.ok:
        return fail(f"the audit log has been tampered with: {len(report.problems)} problems found")
    print("audit: the hash chain is intact")
    return 0


def _operate(args: argparse.Namespace, base: VaultSettings) -> int:
    settings = base.with_secrets(os.environ, generate_seed=False) if args.command == "rewrap" else base
    db = Database(settings.effective_database_url)
    try:
        migrations.migrate(db)
        handlers: dict[str, Callable[[], int]] = {
            "users": lambda: _users(args, db),
            "tokens": lambda: _tokens(args, db),
            "rewrap": lambda: _rewrap(settings, db),
            "audit": lambda: _audit(db),
        }
        return handlers[args.command]()
    finally:
        db.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rmllm-vault``."""
    args = parser().parse_args(argv)
    try:
        base = VaultSettings.from_env(
            os.environ,
            listen=getattr(args, "listen", None),
            data_dir=args.data_dir,
            with_secrets=False,
            log_level=getattr(args, "log_level", None),
            workers=getattr(args, "workers", None),
        )
        configure_logging(base.log_level)
        if args.command == "serve":
            settings = base.with_secrets(os.environ)
            if settings.workers > 1:
                prepare_database(settings)
                argv = child_argv("vault_service.cli", args)
                return supervise(argv, settings.listen, settings.workers, settings.grace_seconds)
            return run_serve(settings, settings.listen, settings.grace_seconds, build_server)
        return _operate(args, base)
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
