"""Server reflection that tells clients the JSON names of fields.

The descriptors protoc embeds in Python stubs leave out `json_name`. Go clients such as
grpcurl then print and accept the proto names (`series_instance_uid`) instead of the
canonical proto3 JSON names (`seriesInstanceUid`). Reflection here serves copies of the
descriptors with every field's `json_name` filled in, as protobuf's JSON mapping defines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection


def _fill_json_names(
    messages: Iterable[descriptor_pb2.DescriptorProto],
    source: descriptor_pool.DescriptorPool,
    scope: str,
) -> None:
    for message in messages:
        full_name = f"{scope}.{message.name}" if scope else message.name
        described = source.FindMessageTypeByName(full_name)
        for field in message.field:
            field.json_name = described.fields_by_name[field.name].json_name
        _fill_json_names(message.nested_type, source, full_name)


def pool_with_json_names(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding `files` and their imports, with json_name on every field."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
        _fill_json_names(proto.message_type, file.pool, proto.package)
        pool.Add(proto)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def enable(server: grpc.aio.Server, services: Sequence[str]) -> None:
    """Serve reflection for `services` (full names) with JSON field names."""
    names = (*services, reflection.SERVICE_NAME)
    source = descriptor_pool.Default()
    pool = pool_with_json_names(source.FindFileContainingSymbol(name) for name in names)
    reflection.enable_server_reflection(names, server, pool=pool)
