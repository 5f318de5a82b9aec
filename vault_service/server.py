"""The vault's server factory: ``build_server(settings)`` returns a bound server.

It opens the database, applies pending migrations, derives the keyring from the
seed(s), and assembles the gRPC server: the error interceptor (outermost), the
auth interceptor, the VaultService, health and reflection; it starts the
process's ``InvalidationHub`` (the WatchInvalidations fan-out) and the hourly
pruning of raw usage records past ``RMLLM_USAGE_RETENTION_DAYS``. Stopping the
server ends the watch streams first, then stops the pruning and closes the
database.
"""

from __future__ import annotations

import asyncio
import logging

import peewee as pw
from realmultillm.vault.v1 import vault_pb2_grpc

from rmllm_common.errors import Unavailable
from rmllm_common.observe import Observer
from rmllm_common.registry import Registry, default_registry
from rmllm_common.server import ServerHandle, add_standard_services, bind, new_server
from vault_service import accounts, ledger, metrics, migrations
from vault_service.auth import SERVICE_NAME, AuthInterceptor
from vault_service.authguard import AuthGuard
from vault_service.crypto import Keyring
from vault_service.database import Database
from vault_service.servicer import VaultServicer
from vault_service.settings import SettingsError, VaultSettings
from vault_service.watch import InvalidationHub

log = logging.getLogger(__name__)
PRUNE_INTERVAL_SECONDS = 3600.0


def check_seed_matches(db: Database, keyring: Keyring, settings: VaultSettings) -> None:
    """Refuse a freshly generated seed over a database that already holds keys.

    That is a lost seed, not a first start: serving would answer every resolve
    with KEY_DECRYPTION_FAILED. Keys under other unknown key ids only get an error
    log line, since they may be waiting for ``RMLLM_VAULT_OLD_SEEDS``.
    """
    model = db.tables.config
    query = model.select(model.key_id, pw.fn.COUNT(model.id)).group_by(model.key_id).tuples()
    unknown = {
        key_id: count for key_id, count in db.call(lambda: list(query)) if key_id not in keyring.key_ids
    }
    if not unknown:
        return
    described = ", ".join(f"{count} under key id {key_id}" for key_id, count in sorted(unknown.items()))
    if settings.generated_seed_file is not None:
        settings.generated_seed_file.unlink(missing_ok=True)
        raise SettingsError(
            f"no seed is configured and the database already holds encrypted keys ({described}); "
            "restore the seed they were stored under (RMLLM_VAULT_SEED, RMLLM_VAULT_SEED_FILE or "
            f"{settings.generated_seed_file}) instead of starting with a new one"
        )
    log.error(
        "stored keys need seeds that are not configured: %s; add them to RMLLM_VAULT_OLD_SEEDS",
        described,
        extra={"key_id": ",".join(sorted(unknown)), "event": "unknown_key_ids"},
    )


def prepare_database(settings: VaultSettings) -> None:
    """Migrate the schema and check the seed against stored keys, then close.

    ``serve --workers N`` runs this once in the supervisor before starting the
    workers: N processes opening a fresh SQLite file together would race to switch
    it to WAL (SQLite can answer that switch with "busy" without waiting), and only
    the process that generated the seed can tell a first start from a lost seed.
    """
    db = Database(settings.effective_database_url)
    try:
        applied = migrations.migrate(db)
        if applied:
            log.info("database schema migrated", extra={"versions": ",".join(map(str, applied))})
        check_seed_matches(db, Keyring(settings.seed, settings.old_seeds), settings)
    finally:
        db.close()


def _observer(settings: VaultSettings) -> Observer:
    """Every call's request id, trace span, metrics and log line."""
    telemetry = settings.telemetry
    hooks = metrics.CallHooks(metrics.enable()) if telemetry.prometheus else None
    return Observer("vault", hooks, tracing=telemetry.traces)


async def _prune_usage(db: Database, retention_days: float) -> None:
    """Delete raw usage records past retention now and then every hour (the rollups stay)."""
    while True:
        try:
            deleted = await db.run(ledger.prune, db, retention_days)
        except Unavailable:
            deleted = 0  # logged by Database.run; try again next time
        if deleted:
            log.info("pruned usage records", extra={"count": deleted, "event": "usage_pruned"})
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)


async def build_server(settings: VaultSettings, *, registry: Registry | None = None) -> ServerHandle:
    """A vault server bound to ``settings.listen`` (port 0 picks a free port)."""
    db = Database(settings.effective_database_url)
    try:
        return await _assemble(settings, db, registry or default_registry())
    except BaseException:
        await asyncio.to_thread(db.close)
        raise


async def _assemble(settings: VaultSettings, db: Database, registry: Registry) -> ServerHandle:
    applied = await asyncio.to_thread(migrations.migrate, db)
    if applied:
        log.info("database schema migrated", extra={"versions": ",".join(map(str, applied))})
    keyring = Keyring(settings.seed, settings.old_seeds)
    await asyncio.to_thread(check_seed_matches, db, keyring, settings)
    log.info(
        "keyring ready",
        extra={"key_id": keyring.current.key_id, "decrypt_only_key_id": ",".join(keyring.key_ids[1:])},
    )

    async def authenticate(token: str) -> accounts.Principal | None:
        return await db.read(accounts.authenticate, db, token)

    hub = InvalidationHub(db)
    await hub.start()
    guard = AuthGuard(db, settings.auth_limits)
    server = new_server(
        [AuthInterceptor(settings.service_token, authenticate, guard)],
        reuse_port=settings.reuse_port,
        observer=_observer(settings),
    )
    servicer = VaultServicer(
        db,
        keyring,
        hub,
        registry=registry,
        allow_custom_base_url=settings.allow_custom_base_url,
        guard=guard,
    )
    vault_pb2_grpc.add_VaultServiceServicer_to_server(servicer, server)
    health = await add_standard_services(server, [SERVICE_NAME])

    try:
        port = bind(server, settings.listen)
    except OSError:
        await hub.close()
        raise
    pruner = asyncio.create_task(_prune_usage(db, settings.usage_retention_days), name="usage-prune")

    guard.start()

    async def close() -> None:
        await hub.close()
        pruner.cancel()
        await asyncio.gather(pruner, return_exceptions=True)
        try:
            await guard.stop()  # the last counts of failed authentications reach the audit log
        finally:
            await asyncio.to_thread(db.close)

    return ServerHandle(
        server=server,
        port=port,
        health=health,
        service_name=SERVICE_NAME,
        on_stop=close,
        # Watch streams never end on their own: end them first, so a graceful stop
        # does not wait out its grace period on them (the watchers resync elsewhere).
        on_drain=hub.close,
    )
