"""The LLM service's server factory: ``build_server(settings)`` returns a bound server."""

from __future__ import annotations

from realmultillm.llm.v1 import llm_pb2, llm_pb2_grpc

from llm_service.settings import LLMSettings
from rmllm_common.server import ServerHandle, add_standard_services, bind, new_server

SERVICE_NAME = llm_pb2.DESCRIPTOR.services_by_name["LLMService"].full_name


class LLMServicer(llm_pb2_grpc.LLMServiceServicer):
    """The LLMService RPCs; each not yet implemented answers UNIMPLEMENTED."""


async def build_server(settings: LLMSettings) -> ServerHandle:
    """An LLM server bound to ``settings.listen`` (port 0 picks a free port)."""
    server = new_server()
    llm_pb2_grpc.add_LLMServiceServicer_to_server(LLMServicer(), server)  # type: ignore[abstract]
    health = await add_standard_services(server, [SERVICE_NAME])
    port = bind(server, settings.listen)
    return ServerHandle(server=server, port=port, health=health, service_name=SERVICE_NAME)
