"""The gRPC status table is complete: every StoreError has a code."""

from __future__ import annotations

from seriesflow.store import errors
from seriesflow.store.grpc_status import GRPC_STATUS


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _all_subclasses(sub)
    return out


def test_every_store_error_has_a_grpc_status() -> None:
    assert _all_subclasses(errors.StoreError) <= set(GRPC_STATUS)
