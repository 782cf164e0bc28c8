"""Store errors -> gRPC status codes: one table for both of the store's gRPC boundaries.

A query RPC (store.servicer) aborts with the code of the StoreError it hit; a StoreSeries
stream (store.stream) ends with the code of the StoreError that stopped a batch. The two
agree on every error, so they share this table; tests/store/test_grpc_status.py checks
that every StoreError has a row. Client mistakes are never INTERNAL.

    INVALID_ARGUMENT     fix the named field. (RejectedData never ends a stream: the one
                         update PostgreSQL refused is acked INVALID instead.)
    NOT_FOUND            the series or study is not in the catalog (yet).
    UNAVAILABLE          PostgreSQL is down: retry later.
    ABORTED              a deadlock or serialization race that the store's own retries
                         lost: retry.
    FAILED_PRECONDITION  the schema is not at head: run `seriesflow migrate`.
    INTERNAL             a store bug or misconfiguration: see the store's log.

A receiver reconnects and re-sends its unacknowledged updates after a stream ends with any
code; TRANSIENT are the ones that say this is all it takes.
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

# Codes that mean "the same request can succeed if sent again": logged as warnings.
TRANSIENT: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
