"""The vault's server factory: ``build_server(settings)`` returns a bound server.

It opens the database, applies pending migrations, derives the keyring from the
seed(s), and assembles the gRPC server: the error interceptor (outermost), the
auth interceptor, the VaultService, health and reflection. Stopping the server
closes the database.
"""

from __future__ import annotations

import asyncio
import logging

from realmultillm.vault.v1 import vault_pb2_grpc

from rmllm_common.server import ServerHandle, add_standard_services, bind, new_server
from vault_service import accounts, migrations
from vault_service.auth import SERVICE_NAME, AuthInterceptor
from vault_service.crypto import Keyring
from vault_service.database import Database
from vault_service.servicer import VaultServicer
from vault_service.settings import VaultSettings

log = logging.getLogger(__name__)


async def build_server(settings: VaultSettings) -> ServerHandle:
    """A vault server bound to ``settings.listen`` (port 0 picks a free port)."""
    db = Database(settings.effective_database_url)
    applied = await asyncio.to_thread(migrations.migrate, db)
    if applied:
        log.info("database schema migrated", extra={"versions": ",".join(map(str, applied))})
    keyring = Keyring(settings.seed, settings.old_seeds)
    log.info(
        "keyring ready",
        extra={"key_id": keyring.current.key_id, "decrypt_only_key_id": ",".join(keyring.key_ids[1:])},
    )

    async def authenticate(token: str) -> accounts.Principal | None:
        return await db.run(accounts.authenticate, db, token)

    server = new_server([AuthInterceptor(settings.service_token, authenticate)])
    servicer = VaultServicer(db, keyring, allow_custom_base_url=settings.allow_custom_base_url)
    vault_pb2_grpc.add_VaultServiceServicer_to_server(servicer, server)
    health = await add_standard_services(server, [SERVICE_NAME])
    port = bind(server, settings.listen)

    async def close() -> None:
        await asyncio.to_thread(db.close)

    return ServerHandle(server=server, port=port, health=health, service_name=SERVICE_NAME, on_stop=close)
