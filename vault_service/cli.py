"""``rmllm-vault``: serve the vault, and operate it (users, tokens, budgets, policies, usage, rewrap, audit).

Every command reads the same settings as ``serve`` (data directory, database URL,
seed) and brings the schema up to date first. Errors are one line on stderr with a
non-zero exit status, never a traceback. ``users create`` and ``tokens create``
print the new token once, as the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee as pw

from rmllm_common.cli import add_serve_flags, fail, run_serve, supervise_workers
from rmllm_common.errors import AlreadyExists, RmllmError
from rmllm_common.logs import configure as configure_logging
from vault_service import accounts, audit, ledger, limits, migrations, rewrap, usage_report
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
    _add_expires_in(create)
    users.add_parser("list", parents=[common], help="list users")
    disable = users.add_parser("disable", parents=[common], help="disable a user (its tokens stop working)")
    disable.add_argument("name")
    enable = users.add_parser(
        "enable", parents=[common], help="enable a disabled user (its tokens work again)"
    )
    enable.add_argument("name")
    delete = users.add_parser(
        "delete", parents=[common], help="delete a user with its stored keys, tokens and limits (audited)"
    )
    delete.add_argument("name")
    _limit_parsers(users, common, "name", "a user (every token of the user)")

    tokens = commands.add_parser("tokens", help="create, list and revoke user tokens").add_subparsers(
        dest="action", required=True
    )
    token_create = tokens.add_parser("create", parents=[common], help="create another token for a user")
    token_create.add_argument("user")
    _add_expires_in(token_create)
    token_list = tokens.add_parser("list", parents=[common], help="list tokens (never their values)")
    token_list.add_argument("user", nargs="?")
    revoke = tokens.add_parser("revoke", parents=[common], help="revoke a token by its id (tok_...)")
    revoke.add_argument("token_id")
    _limit_parsers(tokens, common, "token_id", "one token (a virtual key)")

    usage = commands.add_parser("usage", help="usage reports").add_subparsers(dest="action", required=True)
    report = usage.add_parser("report", parents=[common], help="every user's usage, from the daily rollups")
    report.add_argument("--since", default="7d", help="UTC date, time, or age (24h, 7d); default 7d")
    report.add_argument("--until", default="0m", help="UTC date, time, or age; default now")
    report.add_argument("--by", choices=["user", "provider", "model", "day"], default="user")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")

    commands.add_parser("rewrap", parents=[common], help="re-encrypt every stored key under the current seed")
    audit_cmd = commands.add_parser("audit", help="check and read the audit log").add_subparsers(
        dest="action", required=True
    )
    audit_cmd.add_parser("verify", parents=[common], help="verify the audit hash chain")
    audit_list = audit_cmd.add_parser("list", parents=[common], help="print audit rows, oldest first")
    audit_list.add_argument(
        "--since",
        metavar="WHEN",
        help="rows from this moment on: an age (30m, 2h, 7d) or a UTC date or time "
        "(2026-12-01, 2026-12-01T15:00:00Z), as `usage report --since`",
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


def _add_expires_in(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--expires-in",
        metavar="DURATION",
        help="the token stops working after this long: 90d, 12h, 30m, 2w, 3600s (default: never)",
    )


def _expires_in(args: argparse.Namespace) -> int | None:
    return None if args.expires_in is None else accounts.parse_duration(args.expires_in)


def _limit_parsers(group: Any, common: argparse.ArgumentParser, target: str, whom: str) -> None:
    """``budget`` and ``policy`` under ``users`` or ``tokens``."""
    budget = group.add_parser("budget", parents=[common], help=f"set the spend budgets of {whom}")
    budget.add_argument(target)
    budget.add_argument("--daily-usd", metavar="X", help="budget per UTC day, in US dollars")
    budget.add_argument("--monthly-usd", metavar="Y", help="budget per UTC calendar month, in US dollars")
    budget.add_argument("--clear", action="store_true", help="remove both budgets")
    policy = group.add_parser("policy", parents=[common], help=f"set the model policy of {whom}")
    policy.add_argument(target)
    policy.add_argument(
        "--allow", metavar="PATTERNS", help="provider/model patterns, comma-separated ('' clears)"
    )
    policy.add_argument(
        "--deny", metavar="PATTERNS", help="provider/model patterns; a deny wins over an allow"
    )


def _limits(args: argparse.Namespace, db: Database, target: limits.Target) -> int:
    if args.action == "budget":
        daily = usage_report.dollars(args.daily_usd, "--daily-usd")
        monthly = usage_report.dollars(args.monthly_usd, "--monthly-usd")
        found = db.call(
            functools.partial(limits.set_budget, daily=daily, monthly=monthly, clear=args.clear), db, target
        )
        shown = [b for b in found.budgets if b.scope.name.lower() == ("token" if target.token_id else "user")]
        if not shown:
            print(f"{target.label}: no budget")
        for b in shown:
            reset = b.reset_time.strftime("%Y-%m-%dT%H:%M:%SZ")
            print(
                f"{target.label}: {b.period.name.lower()} budget ${b.limit_usd:,.2f}, "
                f"spent ${b.spent_usd:,.4f}, resets {reset}"
            )
        return 0
    policy = db.call(functools.partial(limits.set_policy, allow=args.allow, deny=args.deny), db, target)
    print(
        f"{target.label}: allow {','.join(policy.allow) or '(all)'}; deny {','.join(policy.deny) or '(none)'}"
    )
    return 0


def _usage(args: argparse.Namespace, db: Database) -> int:
    now = datetime.now(UTC)
    since = usage_report.when(args.since, now, "--since")
    until = usage_report.when(args.until, now, "--until")
    if until <= since:
        raise usage_report.ArgumentError("--until must be after --since")
    if until - since > timedelta(days=ledger.MAX_RANGE_DAYS):
        raise usage_report.ArgumentError(f"a report spans at most {ledger.MAX_RANGE_DAYS} days")
    start, end = ledger.check_range(int(since.timestamp() * 1e6), int(until.timestamp() * 1e6))
    groups = db.call(ledger.report, db, start, end, args.by)
    print(usage_report.render(groups, args.by, args.format))
    return 0


def _print_token(token_id: str, token: str) -> None:
    print(f"token id: {token_id}")
    print("the token below is shown only now; store it somewhere safe:")
    print(token)


def _users(args: argparse.Namespace, db: Database) -> int:
    if args.action == "create":
        try:
            user, token_id, token = db.call(accounts.create_user, db, args.name, _expires_in(args))
        except AlreadyExists:
            if not args.exist_ok:
                raise
            token_id, token = db.call(accounts.create_token, db, args.name, _expires_in(args))
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
    elif args.action in ("budget", "policy"):
        return _limits(args, db, db.call(limits.user_target, db, args.name))
    else:
        user_id = db.call(accounts.disable_user, db, args.name)
        print(f"disabled user {args.name} ({user_id})")
    return 0


def _tokens(args: argparse.Namespace, db: Database) -> int:
    if args.action == "create":
        token_id, token = db.call(accounts.create_token, db, args.user, _expires_in(args))
        print(f"created a token for {args.user}")
        _print_token(token_id, token.reveal())
    elif args.action == "list":
        print(f"{'ID':<18} {'USER':<24} {'CREATED':<21} {'EXPIRES':<21} STATUS")
        now = time.time_ns() // 1000
        for info in db.call(accounts.list_tokens, db, args.user):
            if info.revoke_time:
                status = f"revoked {_when(info.revoke_time)}"
            else:
                status = "expired" if info.expired(now) else "active"
            expires = _when(info.expire_time) if info.expire_time is not None else "never"
            created = _when(info.create_time)
            print(f"{info.token_id:<18} {info.user_name:<24} {created:<21} {expires:<21} {status}")
    elif args.action in ("budget", "policy"):
        return _limits(args, db, db.call(limits.token_target, db, args.token_id))
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
    since = None
    if args.since is not None:
        since = int(usage_report.when(args.since, datetime.now(UTC), "--since").timestamp() * 1_000_000)
    rows = db.call(lambda: list(audit.rows(db, since=since, action=args.action_glob, users=users)))
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
    moment = datetime.fromtimestamp(micros / 1_000_000, tz=UTC)
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


def _operate(args: argparse.Namespace, base: VaultSettings) -> int:
    settings = base.with_secrets(os.environ, generate_seed=False) if args.command == "rewrap" else base
    db = Database(settings.effective_database_url)
    try:
        migrations.migrate(db)
        handlers: dict[str, Callable[[], int]] = {
            "users": lambda: _users(args, db),
            "tokens": lambda: _tokens(args, db),
            "rewrap": lambda: _rewrap(settings, db),
            "audit": lambda: _audit(args, db),
            "usage": lambda: _usage(args, db),
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
            metrics_listen=getattr(args, "metrics_listen", None),
        )
        configure_logging(base.log_level)
        if args.command == "serve":
            settings = dataclasses.replace(base.with_secrets(os.environ), reuse_port=args.shared_port)
            if settings.workers > 1:
                prepare_database(settings)
                return supervise_workers(
                    "vault_service.cli",
                    args,
                    settings.listen,
                    settings.workers,
                    settings.grace_seconds,
                    telemetry_settings=settings.telemetry,
                )
            return run_serve(
                settings,
                settings.listen,
                settings.grace_seconds,
                build_server,
                telemetry_settings=settings.telemetry,
                service_name="rmllm-vault",
            )
        return _operate(args, base)
    except (
        SettingsError,
        DatabaseUrlError,
        migrations.SchemaTooNew,
        PermissionError,
        usage_report.ArgumentError,
        ValueError,
    ) as exc:
        return fail(str(exc))
    except RmllmError as exc:
        return fail(exc.message)
    except pw.OperationalError as exc:
        return fail(
            f"the database is not usable: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
        )


if __name__ == "__main__":
    sys.exit(main())
