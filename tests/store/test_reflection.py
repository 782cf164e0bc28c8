"""Reflection serves descriptors whose fields carry their proto3 JSON names."""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from seriesflow.store.reflection import pool_with_json_names
from seriesflow.v1 import series_store_pb2 as pb


def _messages(protos: list[descriptor_pb2.DescriptorProto]) -> list[descriptor_pb2.DescriptorProto]:
    found = []
    for message in protos:
        found.append(message)
        found.extend(_messages(list(message.nested_type)))
    return found


def test_every_served_field_has_its_camel_case_json_name() -> None:
    pool = pool_with_json_names([pb.DESCRIPTOR])
    served = pool.FindFileContainingSymbol("seriesflow.v1.SeriesStore")
    proto = descriptor_pb2.FileDescriptorProto.FromString(served.serialized_pb)
    fields = [f for m in _messages(list(proto.message_type)) for f in m.field]
    assert fields
    assert all(f.HasField("json_name") for f in fields)
    series = next(m for m in proto.message_type if m.name == "Series")
    names = {f.name: f.json_name for f in series.field}
    assert names["series_instance_uid"] == "seriesInstanceUid"
    assert names["num_instances"] == "numInstances"


def test_imported_files_are_served_too() -> None:
    pool = pool_with_json_names([pb.DESCRIPTOR])
    assert pool.FindMessageTypeByName("google.protobuf.Timestamp").full_name == (
        "google.protobuf.Timestamp"
    )
