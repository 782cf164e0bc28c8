"""The database encoding seriesflow needs, checked before migrating or serving.

DICOM text is stored as UTF-8. A database created with another encoding either refuses
characters DICOM allows (LATIN1 and the like) or, with SQL_ASCII, performs no conversion at
all, so psycopg hands back bytes where text was expected and every text comparison fails
with an error that names neither the database nor the cause. Both are refused up front.
"""

from __future__ import annotations

from typing import Any

_QUERY = (
    "SELECT current_database()::text, pg_encoding_to_char(encoding)::text"
    " FROM pg_database WHERE datname = current_database()"
)


def encoding_problem(conn: Any) -> str | None:
    """What is wrong with the encoding of the database `conn` (a psycopg connection) is
    connected to, in words naming the fix; None when it is UTF8."""
    row = conn.execute(_QUERY).fetchone()
    name, encoding = (_text(value) for value in row)
    if encoding == "UTF8":
        return None
    return (
        f"database {name!r} uses encoding {encoding}; seriesflow stores DICOM text as UTF-8 "
        f"and needs a UTF8 database: create one with CREATE DATABASE {name} ENCODING 'UTF8' "
        "TEMPLATE template0 (or initdb -E UTF8) and point SERIESFLOW_DATABASE_URL at it"
    )


def _text(value: object) -> str:
    # Under SQL_ASCII, psycopg returns text columns as bytes.
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
