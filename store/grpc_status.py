"""Store errors -> gRPC status codes, in one table.

A query RPC (store.servicer) aborts with the code of the StoreError it hit.
tests/store/test_grpc_status.py checks that every StoreError has a row. Client mistakes
are never INTERNAL.
"""

from __future__ import annotations

from typing import Final

import grpc

from seriesflow.store.errors import (
    BadRequest,
    DatabaseFault,
    DatabaseUnavailable,
    NotFound,
    RejectedData,
    RetryableConflict,
    SchemaNotAtHead,
    StoreError,
)

GRPC_STATUS: Final[dict[type[StoreError], grpc.StatusCode]] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    RejectedData: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,
    RetryableConflict: grpc.StatusCode.ABORTED,
    SchemaNotAtHead: grpc.StatusCode.FAILED_PRECONDITION,
    DatabaseFault: grpc.StatusCode.INTERNAL,
}
