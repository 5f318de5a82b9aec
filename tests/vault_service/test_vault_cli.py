"""``rmllm-vault`` operator commands: users, tokens, rewrap, audit verify, and their errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from testkit.vault import OLD_SEED, SEED

from rmllm_common.errors import UserDisabled
from rmllm_common.secret import Secret
from vault_service import accounts, cli, configs, migrations
from vault_service.crypto import Keyring
from vault_service.database import Database

Invoke = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> object:
    """``run(*argv) -> (exit code, stdout, stderr)`` with the test's data directory."""
    monkeypatch.setenv("RMLLM_DATA_DIR", str(data_dir))
    for name in ("RMLLM_VAULT_SEED", "RMLLM_VAULT_OLD_SEEDS", "RMLLM_DATABASE_URL", "RMLLM_SERVICE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)  # keep pytest's log capture

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def one_line_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_users_and_tokens(run: Invoke, data_dir: Path) -> None:
    invoke = run
    code, out, _ = invoke("users", "create", "alice")
    assert code == 0
    token = out.strip().splitlines()[-1]
    assert accounts.plausible(token) and out.count(token) == 1
    db = Database(f"sqlite:///{data_dir / 'vault.sqlite3'}")
    try:
        principal = db.call(accounts.authenticate, db, token)
        assert principal is not None and principal.user_name == "alice"

        code, _, err = invoke("users", "create", "alice")
        assert code != 0 and "already exists" in one_line_error(err)
        code, _, err = invoke("users", "create", "bad name!")
        assert code != 0 and "user names are" in one_line_error(err)

        code, out, _ = invoke("tokens", "create", "alice")
        second = out.strip().splitlines()[-1]
        assert code == 0 and accounts.plausible(second) and second != token
        code, out, _ = invoke("tokens", "list", "alice")
        ids = [line.split()[0] for line in out.splitlines()[1:]]
        assert code == 0 and len(ids) == 2 and all(i.startswith("tok_") for i in ids)
        assert token not in out and second not in out

        code, out, _ = invoke("tokens", "revoke", ids[0])
        assert code == 0
        assert db.call(accounts.authenticate, db, token) is None
        assert db.call(accounts.authenticate, db, second) is not None
        code, out, _ = invoke("tokens", "list")
        assert "revoked" in out.splitlines()[1] and out.splitlines()[2].endswith("active")
        code, _, err = invoke("tokens", "revoke", "tok_nope")
        assert code != 0 and "no token" in one_line_error(err)

        code, out, _ = invoke("users", "list")
        fields = out.splitlines()[1].split()
        assert code == 0 and fields[0] == "alice" and fields[2:4] == ["active", "1"]
        code, _, _ = invoke("users", "disable", "alice")
        assert code == 0
        with pytest.raises(UserDisabled):
            db.call(accounts.authenticate, db, second)
        code, _, err = invoke("tokens", "create", "alice")
        assert code != 0 and "disabled" in one_line_error(err)
        code, _, err = invoke("users", "disable", "nobody")
        assert code != 0 and "no user" in one_line_error(err)

        code, out, _ = invoke("audit", "verify")
        assert code == 0 and "intact" in out
        actions = [r.action for r in db.call(lambda: list(db.tables.audit.select()))]
        assert actions == ["user.create", "token.create", "token.create", "token.revoke", "user.disable"]
        db.call(lambda: db.tables.audit.delete().where(db.tables.audit.seq == 2).execute())
        code, out, err = invoke("audit", "verify")
        assert code != 0 and "missing" in out and "tampered" in one_line_error(err)
    finally:
        db.close()
    assert not (data_dir / "vault_seed").exists()  # users and tokens need no seed


def test_rewrap_prints_counts(run: Invoke, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    invoke = run
    db = Database(f"sqlite:///{data_dir / 'vault.sqlite3'}")
    try:
        migrations.migrate(db)
        principal, _, _ = db.call(accounts.create_user, db, "alice")
        old = Keyring(Secret(OLD_SEED))
        for provider in ("openai", "openrouter"):
            key = Secret("sk-or-0000" if provider == "openrouter" else "sk-0000")
            draft = configs.Draft(
                old.encrypt(key, principal.user_id, provider), old.current.key_id, "", "", configs.Settings()
            )
            db.call(configs.put, db, principal.user_id, provider, draft, "r")
    finally:
        db.close()
    monkeypatch.setenv("RMLLM_VAULT_SEED", SEED)
    code, out, err = invoke("rewrap")
    assert code != 0 and "0 re-encrypted" in out and "2 failed" in out
    assert "RMLLM_VAULT_OLD_SEEDS" in one_line_error(err)
    monkeypatch.setenv("RMLLM_VAULT_OLD_SEEDS", OLD_SEED)
    code, out, _ = invoke("rewrap")
    assert code == 0 and "2 re-encrypted, 0 already" in out
    code, out, _ = invoke("rewrap")
    assert code == 0 and "0 re-encrypted, 2 already" in out


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({"RMLLM_VAULT_SEED": "changeme"}, ["serve"], "secrets.token_urlsafe(32)"),
        ({}, ["rewrap"], "no seed is configured"),
        ({"RMLLM_VAULT_SEED": "Qk3Lp9Zr7Xw2Vt5N"}, ["rewrap"], "too short"),
        ({"RMLLM_DATABASE_URL": "mysql://x/y"}, ["users", "list"], "sqlite:/// or postgresql://"),
        ({"RMLLM_DATABASE_URL": "postgresql://127.0.0.1:1/x"}, ["users", "list"], "database is not usable"),
        ({"RMLLM_SERVICE_TOKEN": "short"}, ["serve"], "must be at least 32 random bytes"),
        ({"RMLLM_SERVICE_TOKEN": "a" * 32}, ["serve"], "RMLLM_SERVICE_TOKEN is too short"),
    ],
)
def test_configuration_errors_are_one_line(
    run: Invoke, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str], expected: str
) -> None:
    invoke = run
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = invoke(*argv)
    assert code != 0 and expected in one_line_error(err)


def test_users_create_exist_ok_enable_delete_and_audit_list(run: Invoke, data_dir: Path) -> None:
    import json

    invoke = run
    code, out, _ = invoke("users", "create", "alice", "--exist-ok")
    assert code == 0 and out.startswith("created user alice")
    first = out.strip().splitlines()[-1]
    code, out, _ = invoke("users", "create", "alice", "--exist-ok")  # as the README tour does
    second = out.strip().splitlines()[-1]
    assert code == 0 and "exists" in out and accounts.plausible(second) and second != first

    code, _, _ = invoke("users", "disable", "alice")
    code, _, err = invoke("users", "create", "alice", "--exist-ok")
    assert code != 0 and "disabled" in one_line_error(err)
    code, out, _ = invoke("users", "enable", "alice")
    assert code == 0 and out.startswith("enabled user alice")
    code, _, err = invoke("users", "enable", "nobody")
    assert code != 0 and "no user" in one_line_error(err)

    code, _, _ = invoke("users", "create", "bob")
    code, out, _ = invoke("users", "delete", "bob")
    assert code == 0 and "deleted user bob" in out and "0 stored keys and 1 tokens" in out
    code, out, _ = invoke("users", "list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["alice"]
    code, _, err = invoke("users", "delete", "bob")
    assert code != 0 and "no user named 'bob'" in one_line_error(err)

    code, out, _ = invoke("audit", "list", "--user", "bob", "--format", "json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [e["action"] for e in events] == ["user.create", "token.create", "user.delete"]
    assert events[-1]["time"].endswith("Z") and "configs=0 tokens=1" in events[-1]["detail"]
    code, out, _ = invoke("audit", "list", "--action", "user.*", "--since", "1h")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["SEQ", "TIME", "ACTOR", "ACTION"]
    assert [line.split()[3] for line in lines[1:]] == [
        "user.create",
        "user.disable",
        "user.enable",
        "user.create",
        "user.delete",
    ]
    code, out, _ = invoke("audit", "list", "--since", "2999-01-01")
    assert code == 0 and len(out.splitlines()) == 1  # the header only
    code, _, err = invoke("audit", "list", "--user", "nobody")
    assert code != 0 and "no user named 'nobody'" in one_line_error(err)
    code, _, err = invoke("audit", "list", "--since", "yesterday")  # the forms of `usage report --since`
    assert code != 0 and "--since must be a UTC date" in one_line_error(err)
    code, out, _ = invoke("audit", "verify")
    assert code == 0 and "intact" in out


def test_budgets_policies_and_the_usage_report(run: Invoke, data_dir: Path) -> None:
    import json

    from vault_service import ledger, limits

    invoke = run
    code, out, _ = invoke("users", "create", "alice")
    assert code == 0
    code, out, _ = invoke("tokens", "list", "alice")
    token_id = out.splitlines()[1].split()[0]
    code, out, _ = invoke("users", "budget", "alice", "--daily-usd", "5", "--monthly-usd", "$50")
    assert code == 0 and "daily budget $5.00" in out and "monthly budget $50.00" in out
    code, out, _ = invoke("tokens", "budget", token_id, "--daily-usd", "0.5")
    assert code == 0 and f"token {token_id}: daily budget $0.50" in out
    for bad, says in (
        ("-1", "from 0 to"),
        ("abc", "a number of US dollars"),
        ("1e9", "at most"),
        ("inf", "from 0"),
    ):
        code, _, err = invoke("users", "budget", "alice", "--daily-usd", bad)
        assert code == 2 and says in one_line_error(err), bad
    code, _, err = invoke("users", "budget", "alice")
    assert code == 2 and "--daily-usd" in one_line_error(err)
    code, _, err = invoke("users", "budget", "nobody", "--daily-usd", "1")
    assert code == 2 and "no user named" in one_line_error(err)
    code, out, _ = invoke(
        "users", "policy", "alice", "--allow", "openai/gpt-4o-mini,anthropic/*", "--deny", "openai/gpt-4o"
    )
    assert code == 0 and "allow openai/gpt-4o-mini,anthropic/*; deny openai/gpt-4o" in out
    code, _, err = invoke("tokens", "policy", token_id, "--allow", "no-slash")
    assert code == 2 and "not a model pattern" in one_line_error(err)

    db = Database(f"sqlite:///{data_dir / 'vault.sqlite3'}")
    try:
        user_id = db.call(lambda: db.tables.user.get(db.tables.user.name == "alice").id)
        found = db.call(limits.lookup, db, user_id, token_id)
        assert sorted((b.scope.name, b.period.name, b.limit_usd) for b in found.budgets) == [
            ("TOKEN", "DAILY", 0.5),
            ("USER", "DAILY", 5.0),
            ("USER", "MONTHLY", 50.0),
        ]
        assert found.user_policy.allow == ("openai/gpt-4o-mini", "anthropic/*")
        now = ledger.now_us()
        entries = [
            ledger.Entry(
                f"r{i}",
                now - i,
                user_id,
                token_id,
                provider,
                "m1",
                "Chat",
                False,
                100,
                10,
                0,
                0,
                0,
                True,
                0.25,
                1000,
                None,
                "OK" if i else "UNAVAILABLE",
                "",
                0,
            )
            for i, provider in enumerate(("openai", "openai", "anthropic"))
        ]
        db.call(ledger.ingest, db, entries)
    finally:
        db.close()
    code, out, _ = invoke("usage", "report", "--by", "provider")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["PROVIDER", "CALLS", "FAILED"]
    assert lines[1].split()[:3] == ["anthropic", "1", "0"] and lines[2].split()[:3] == ["openai", "2", "1"]
    assert lines[-1].split()[:3] == ["TOTAL", "3", "1"] and lines[-1].endswith("0.750000")
    code, out, _ = invoke("usage", "report", "--by", "user", "--format", "json", "--since", "1d")
    assert json.loads(out) == [
        {
            "user": "alice",
            "calls": 3,
            "failed": 1,
            "input": 300,
            "output": 30,
            "cache_read": 0,
            "cache_write": 0,
            "reasoning": 0,
            "cost_usd": 0.75,
        }
    ]
    code, out, _ = invoke("usage", "report", "--by", "model", "--format", "csv")
    assert (
        out.splitlines()[0]
        == "provider,model,calls,failed,input,output,cache_read,cache_write,reasoning,cost_usd"
    )
    for argv, says in (
        (("--since", "2026-12-02", "--until", "2026-12-01"), "--until must be after --since"),
        (("--since", "400d"), "at most 366 days"),
        (("--since", "yesterday"), "--since must be"),
    ):
        code, _, err = invoke("usage", "report", *argv)
        assert code == 2 and says in one_line_error(err), argv
