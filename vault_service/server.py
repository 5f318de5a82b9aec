"""The vault's server factory: ``build_server(settings)`` returns a bound server."""

from __future__ import annotations

from realmultillm.vault.v1 import vault_pb2, vault_pb2_grpc

from rmllm_common.server import ServerHandle, add_standard_services, bind, new_server
from vault_service.settings import VaultSettings

SERVICE_NAME = vault_pb2.DESCRIPTOR.services_by_name["VaultService"].full_name


class VaultServicer(vault_pb2_grpc.VaultServiceServicer):
    """The VaultService RPCs; each not yet implemented answers UNIMPLEMENTED."""


async def build_server(settings: VaultSettings) -> ServerHandle:
    """A vault server bound to ``settings.listen`` (port 0 picks a free port)."""
    server = new_server()
    vault_pb2_grpc.add_VaultServiceServicer_to_server(VaultServicer(), server)  # type: ignore[abstract]
    health = await add_standard_services(server, [SERVICE_NAME])
    port = bind(server, settings.listen)
    return ServerHandle(server=server, port=port, health=health, service_name=SERVICE_NAME)
