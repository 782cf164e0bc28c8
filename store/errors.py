"""The store's errors, and the one table that maps psycopg errors onto them.

    StoreError
    ├── DatabaseUnavailable   PostgreSQL unreachable, shutting down, out of connections.
    │                         Transient: streams end UNAVAILABLE, the receiver re-sends.
    ├── RetryableConflict     deadlock or serialization failure: the transaction is retried
    │                         (ABORTED if it keeps losing).
    ├── RejectedData          PostgreSQL refused the data itself (class 22/23/54): the
    │                         update is rejected alone as INVALID; re-sending cannot succeed.
    ├── SchemaNotAtHead       tables missing or at another revision: run `seriesflow migrate`.
    ├── DatabaseFault         anything else PostgreSQL raised: a bug or a misconfiguration.
    ├── BadRequest            a query request is malformed; `field` names the culprit.
    └── NotFound              the series / study asked for is not in the catalog.

psycopg is only ever translated here (`translate`), at the database boundary; what each
error becomes at the gRPC boundary is the table in store.grpc_status.
"""

from __future__ import annotations

import psycopg
import psycopg_pool

MIGRATE_HINT = "run `seriesflow migrate` (with the same database URL) to bring it to head"


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class DatabaseUnavailable(StoreError):
    """PostgreSQL cannot be reached or refuses connections now; retry later."""


class RetryableConflict(StoreError):
    """The transaction lost a deadlock or serialization race; running it again is safe."""


class RejectedData(StoreError):
    """PostgreSQL rejected a value (bad data or a violated constraint); do not retry as is."""


class SchemaNotAtHead(StoreError):
    """The database schema is missing or not at the head revision; run `seriesflow migrate`."""


class DatabaseFault(StoreError):
    """An unexpected database error: a bug or a misconfiguration. The message says which."""


class BadRequest(StoreError):
    """A request field is malformed or out of range; fix the named field and ask again."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(StoreError):
    """The requested series or study is not in the catalog (yet)."""


# SQLSTATE classes (first two characters) and exact codes, most specific first. Exact codes
# beat classes; classes beat the DB-API exception type fallback below.
SQLSTATE_TABLE: dict[str, type[StoreError]] = {
    "40001": RetryableConflict,  # serialization_failure
    "40P01": RetryableConflict,  # deadlock_detected
    "42P01": SchemaNotAtHead,  # undefined_table
    "42703": SchemaNotAtHead,  # undefined_column
    "42704": SchemaNotAtHead,  # undefined_object
    "08": DatabaseUnavailable,  # connection exception
    "53": DatabaseUnavailable,  # insufficient resources (too many connections, disk full)
    "57": DatabaseUnavailable,  # operator intervention (admin shutdown, cannot connect now)
    "58": DatabaseUnavailable,  # system error (I/O error)
    "22": RejectedData,  # data exception
    "23": RejectedData,  # integrity constraint violation
    # program limit exceeded (a value too long for an index row, JSON nested too deeply):
    # caused by one update's data, never by the connection. psycopg files it under
    # OperationalError, which the type fallback would make DatabaseUnavailable, and the
    # receiver would re-send the same update forever.
    "54": RejectedData,
}

# Fallback by exception type, for errors without a SQLSTATE (a connection that broke
# client-side has none) and for SQLSTATE classes not listed above. Every DB-API class
# psycopg defines is listed: tests/store/test_errors.py checks this table is complete.
EXCEPTION_TABLE: dict[type[Exception], type[StoreError]] = {
    psycopg_pool.PoolTimeout: DatabaseUnavailable,
    psycopg_pool.PoolClosed: DatabaseUnavailable,
    psycopg.OperationalError: DatabaseUnavailable,
    psycopg.InterfaceError: DatabaseUnavailable,
    psycopg.DataError: RejectedData,
    psycopg.IntegrityError: RejectedData,
    psycopg.ProgrammingError: DatabaseFault,
    psycopg.NotSupportedError: DatabaseFault,
    psycopg.InternalError: DatabaseFault,
    psycopg.DatabaseError: DatabaseFault,
    psycopg.Error: DatabaseFault,
    psycopg.Warning: DatabaseFault,
}


def classify(exc: BaseException) -> type[StoreError] | None:
    """The StoreError class for a psycopg (or pool) exception; None if it is not one."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        found = SQLSTATE_TABLE.get(sqlstate) or SQLSTATE_TABLE.get(sqlstate[:2])
        if found is not None:
            return found
    for exc_type in type(exc).__mro__:
        if exc_type in EXCEPTION_TABLE:
            return EXCEPTION_TABLE[exc_type]
    return None


def translate(exc: BaseException) -> StoreError:
    """The StoreError to raise for `exc` (`raise translate(exc) from exc`)."""
    if isinstance(exc, StoreError):
        return exc
    cls = classify(exc)
    if cls is None:
        raise TypeError(f"not a database error: {exc!r}") from exc
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if cls is SchemaNotAtHead:
        return SchemaNotAtHead(
            f"the database schema is not what this store expects ({detail}); {MIGRATE_HINT}"
        )
    if cls is DatabaseUnavailable:
        return DatabaseUnavailable(f"PostgreSQL is unavailable: {detail}")
    return cls(detail)


__all__ = [
    "MIGRATE_HINT",
    "BadRequest",
    "DatabaseFault",
    "DatabaseUnavailable",
    "NotFound",
    "RejectedData",
    "RetryableConflict",
    "SchemaNotAtHead",
    "StoreError",
    "classify",
    "translate",
]
