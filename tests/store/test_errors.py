"""The error table is complete: every psycopg error translates to a StoreError."""

from __future__ import annotations

import inspect

import psycopg
import psycopg.errors
import psycopg_pool

from seriesflow.store import errors


def test_every_psycopg_error_class_translates_to_a_store_error() -> None:
    classes = {
        c
        for _, c in inspect.getmembers(psycopg.errors, inspect.isclass)
        if issubclass(c, psycopg.Error)
    }
    classes |= {psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed, psycopg_pool.TooManyRequests}
    assert len(classes) > 200  # every SQLSTATE class psycopg knows
    for cls in classes:
        assert errors.classify(cls("boom")) is not None, cls


def test_every_dbapi_class_has_its_own_row() -> None:
    dbapi = {
        psycopg.Error,
        psycopg.Warning,
        psycopg.InterfaceError,
        psycopg.DatabaseError,
        psycopg.DataError,
        psycopg.OperationalError,
        psycopg.IntegrityError,
        psycopg.InternalError,
        psycopg.ProgrammingError,
        psycopg.NotSupportedError,
    }
    assert dbapi <= set(errors.EXCEPTION_TABLE)


def test_sqlstates_map_to_the_documented_errors() -> None:
    cases = {
        psycopg.errors.DeadlockDetected: errors.RetryableConflict,
        psycopg.errors.SerializationFailure: errors.RetryableConflict,
        psycopg.errors.AdminShutdown: errors.DatabaseUnavailable,
        psycopg.errors.CannotConnectNow: errors.DatabaseUnavailable,
        psycopg.errors.TooManyConnections: errors.DatabaseUnavailable,
        psycopg.errors.UndefinedTable: errors.SchemaNotAtHead,
        psycopg.errors.UntranslatableCharacter: errors.RejectedData,
        psycopg.errors.UniqueViolation: errors.RejectedData,
        psycopg.errors.ProgramLimitExceeded: errors.RejectedData,  # index row too large
        psycopg.errors.StatementTooComplex: errors.RejectedData,
        psycopg.errors.NumericValueOutOfRange: errors.RejectedData,
        psycopg.OperationalError: errors.DatabaseUnavailable,  # no SQLSTATE: connection lost
        psycopg_pool.PoolTimeout: errors.DatabaseUnavailable,
    }
    for exc_type, expected in cases.items():
        assert errors.classify(exc_type("x")) is expected, exc_type


def test_schema_errors_name_the_fix() -> None:
    translated = errors.translate(psycopg.errors.UndefinedTable('relation "series" missing'))
    assert "seriesflow migrate" in str(translated)
