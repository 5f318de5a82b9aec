"""Optional token expiry (issue 13 item 16): ``--expires-in``, shown in ``tokens list``, refused after.

Time passing is simulated by moving a token's stored expiry into the past, as the
clock would; everything else runs for real: the CLI, a vault server on loopback,
the migration on both backends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from realmultillm.vault.v1 import vault_pb2 as pb
from testkit.vault import SERVICE_TOKEN, Failure, Vault, md

from rmllm_common.errors import InvalidRequest
from vault_service import accounts, cli, migrations
from vault_service.database import Database

DAY_MICROS = 86_400 * 1_000_000


def _expire_now(db: Database, token_id: str) -> None:
    """What the clock does to a token at its expiry: its expire_time is no longer in the future."""
    model = db.tables.token
    db.call(
        lambda: model.update(expire_time=time.time_ns() // 1000 - 1).where(model.id == token_id).execute()
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90d", 90 * 86400),
        ("12h", 43200),
        ("30m", 1800),
        ("2w", 14 * 86400),
        ("3600s", 3600),
        (" 1d ", 86400),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert accounts.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "d", "0d", "-1d", "1.5d", "1y", "90 d", "3661d", "99999999d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest, match="--expires-in"):
        accounts.parse_duration(text)


def test_expiry_from_the_cli_is_listed_and_enforced(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RMLLM_DATA_DIR", str(data_dir))
    for name in ("RMLLM_VAULT_SEED", "RMLLM_DATABASE_URL", "RMLLM_SERVICE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    before = time.time_ns() // 1000
    code, out, _ = invoke("users", "create", "alice", "--expires-in", "90d")
    assert code == 0
    first = out.strip().splitlines()[-1]
    code, out, _ = invoke("tokens", "create", "alice", "--expires-in", "12h")
    assert code == 0
    second = out.strip().splitlines()[-1]
    code, out, _ = invoke("tokens", "create", "alice")
    assert code == 0
    forever = out.strip().splitlines()[-1]
    code, _, err = invoke("tokens", "create", "alice", "--expires-in", "soon")
    assert code == 2 and "--expires-in takes a whole number" in err

    db = Database(f"sqlite:///{data_dir / 'vault.sqlite3'}")
    try:
        rows = {row.id: row for row in db.call(lambda: list(db.tables.token.select()))}
        by_expiry = sorted(rows.values(), key=lambda r: r.expire_time or 2**62)
        assert 90 * DAY_MICROS <= by_expiry[1].expire_time - before <= 90 * DAY_MICROS + 60_000_000
        assert 0 < by_expiry[0].expire_time - before - 12 * 3600 * 1_000_000 < 60_000_000
        assert by_expiry[2].expire_time is None

        code, out, _ = invoke("tokens", "list", "alice")
        header, *lines = out.splitlines()
        assert header.split() == ["ID", "USER", "CREATED", "EXPIRES", "STATUS"]
        expires = {line.split()[0]: line.split()[3] for line in lines}
        assert expires[by_expiry[2].id] == "never"
        assert expires[by_expiry[1].id] == time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(by_expiry[1].expire_time / 1_000_000)
        )
        assert all(line.endswith("active") for line in lines)

        for token in (first, second, forever):
            assert db.call(accounts.authenticate, db, token) is not None
        _expire_now(db, by_expiry[0].id)  # the 12-hour token: ``second``
        assert db.call(accounts.authenticate, db, second) is None
        assert db.call(accounts.authenticate, db, first) is not None
        code, out, _ = invoke("tokens", "list", "alice")
        status = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:]}
        assert status[by_expiry[0].id] == "expired"
        code, out, _ = invoke("users", "list")
        assert out.splitlines()[1].split()[3] == "2"  # two usable tokens left
        details = [
            r.detail for r in db.call(lambda: list(db.tables.audit.select().order_by(db.tables.audit.seq)))
        ]
        assert details[1].endswith(f"expire_time={by_expiry[1].expire_time}")
    finally:
        db.close()


async def test_an_expired_token_is_refused_like_an_unknown_one(
    vault: Vault, fails: Callable[[Awaitable[Any]], Awaitable[Failure]]
) -> None:
    _, token_id, secret = vault.db.call(accounts.create_user, vault.db, "bob", 3600)
    token = secret.reveal()
    await vault.stub.PutProviderConfig(
        pb.PutProviderConfigRequest(provider="openai", api_key="sk-expiry-test-0123456789"),
        metadata=md(token),
    )
    resolve = pb.ResolveCredentialsRequest(user_token=token, provider="openai")
    assert (await vault.stub.ResolveCredentials(resolve, metadata=md(SERVICE_TOKEN))).user_id
    assert (
        await vault.stub.AuthenticateToken(
            pb.AuthenticateTokenRequest(user_token=token), metadata=md(SERVICE_TOKEN)
        )
    ).user_id

    _expire_now(vault.db, token_id)
    unknown = accounts.new_token().reveal()
    for who in (token, unknown):
        listed = await fails(
            vault.stub.ListProviderConfigs(pb.ListProviderConfigsRequest(), metadata=md(who))
        )
        resolved = await fails(
            vault.stub.ResolveCredentials(
                pb.ResolveCredentialsRequest(user_token=who, provider="openai"), metadata=md(SERVICE_TOKEN)
            )
        )
        checked = await fails(
            vault.stub.AuthenticateToken(
                pb.AuthenticateTokenRequest(user_token=who), metadata=md(SERVICE_TOKEN)
            )
        )
        for failed in (listed, resolved, checked):
            assert (failed.code.name, failed.reason) == ("UNAUTHENTICATED", "TOKEN_INVALID")
            assert "expired" in failed.message


def test_the_expiry_migration_keeps_existing_tokens_valid(db_url: str) -> None:
    db = Database(db_url)
    try:
        migrations.migrate(db, target=2)
        model = db.tables
        db.call(lambda: model.user.insert(id="usr_old", name="old", disabled=False, create_time=1).execute())
        old_token = accounts.new_token().reveal()
        db.call(
            lambda: db.db.execute_sql(
                "INSERT INTO tokens (id, user_id, token_hash, create_time) VALUES (%s, %s, %s, %s)".replace(
                    "%s", db.db.param
                ),
                ("tok_old", "usr_old", accounts.token_hash(old_token), 1),
            )
        )
        assert 3 in migrations.migrate(db)
        principal = db.call(accounts.authenticate, db, old_token)
        assert principal is not None and principal.user_id == "usr_old"
        (info,) = db.call(accounts.list_tokens, db, "old")
        assert info.expire_time is None and not info.expired(time.time_ns() // 1000)
    finally:
        db.close()
