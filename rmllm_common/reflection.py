"""Server reflection that serves the proto files with their comments.

The generated ``*_pb2`` modules carry descriptors without source info, and
grpcio-reflection rebuilds files with ``CopyToProto``, which drops it too, so
``grpcurl describe`` would show users no documentation. This servicer answers
exactly as grpcio-reflection does, then swaps each of our files in the answer for
its documented twin from ``descriptors.binpb`` (written by scripts/gen_protos.py
with ``--include_source_info``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import _async, reflection_pb2, reflection_pb2_grpc


@functools.cache
def documented_files() -> dict[str, bytes]:
    """Serialized FileDescriptorProtos with comments, by file name."""
    raw = resources.files("realmultillm").joinpath("descriptors.binpb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    return {f.name: f.SerializeToString() for f in files if f.name.startswith("realmultillm/")}


class DocumentedReflectionServicer(_async.ReflectionServicer):
    """grpcio-reflection's servicer, answering with documented file descriptors."""

    def _document(self, response: reflection_pb2.ServerReflectionResponse) -> Any:
        if response.HasField("file_descriptor_response"):
            documented = documented_files()
            files = response.file_descriptor_response.file_descriptor_proto
            for index, raw in enumerate(files):
                name = descriptor_pb2.FileDescriptorProto.FromString(raw).name
                if name in documented:
                    files[index] = documented[name]
        return response

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._document(super()._file_by_filename(request, filename))  # type: ignore[misc]

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        found = super()._file_containing_symbol(request, fully_qualified_name)  # type: ignore[misc]
        return self._document(found)

    def _file_containing_extension(self, request: Any, containing_type: str, extension_number: int) -> Any:
        found = super()._file_containing_extension(  # type: ignore[misc]
            request, containing_type, extension_number
        )
        return self._document(found)


def enable(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Register documented reflection for ``service_names`` on ``server``."""
    servicer = DocumentedReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
