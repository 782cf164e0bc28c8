"""Checks on the fields of query requests, shared by every query RPC.

Each check returns the usable value or raises BadRequest naming the field and saying what
to send instead, before anything reaches PostgreSQL. A value that could never match a
stored row (a UID that is not UID syntax, a filter longer than any stored value, a date
range that ends before it starts) is the client's mistake: INVALID_ARGUMENT, not an
empty page.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from seriesflow.store.errors import BadRequest
from seriesflow.store.validation import is_uid, parse_date

# Stored text is never cut (a hostile or broken modality sends kilobytes where DICOM says
# 64 characters), and whatever was stored must be findable: a filter may be as long as any
# stored value can be, i.e. a whole StoreSeries message (the server's 64 MiB receive limit).
TEXT_MAX_LENGTH: Final = 64 * 1024 * 1024
_SHOWN: Final = 64


def _shown(value: str) -> str:
    text = value if len(value) <= _SHOWN else value[:_SHOWN] + "…"
    return repr(text)


def text(value: str, field: str) -> str:
    """An exact-match text filter: no NUL, at most TEXT_MAX_LENGTH characters."""
    if "\0" in value:
        raise BadRequest(field, "contains a NUL character")
    if len(value) > TEXT_MAX_LENGTH:
        raise BadRequest(
            field, f"is {len(value)} characters long; at most {TEXT_MAX_LENGTH} are accepted"
        )
    return value


def uid(value: str, field: str, *, required: bool = False) -> str:
    """A DICOM UID, as ingestion accepts them (so a malformed one could never match)."""
    if not value.strip():
        if required:
            raise BadRequest(field, "is required")
        return ""
    text(value, field)
    if not is_uid(value):
        raise BadRequest(
            field,
            f"{_shown(value)} is not a DICOM UID (digits and dots, at most 64 characters,"
            " no spaces)",
        )
    return value


def date_range(first: str, last: str, fields: tuple[str, str]) -> tuple[dt.date | None, ...]:
    """Two optional YYYYMMDD / YYYY-MM-DD dates, the first not after the second."""
    dates = tuple(_date(value, field) for value, field in zip((first, last), fields, strict=True))
    _ordered(dates, fields)
    return dates


def time_range(request: Message, fields: tuple[str, str]) -> tuple[dt.datetime | None, ...]:
    """Two optional Timestamp fields of `request`, the first before the second."""
    times = tuple(_time(request, field) for field in fields)
    _ordered(times, fields)
    return times


def _ordered(bounds: tuple[dt.date | None, ...], fields: tuple[str, str]) -> None:
    first, last = bounds
    if first is not None and last is not None and first > last:
        raise BadRequest(
            fields[1],
            f"{last.isoformat()} is before {fields[0]} {first.isoformat()};"
            " swap them or leave one out",
        )


def _date(value: str, field: str) -> dt.date | None:
    if not value:
        return None
    parsed = parse_date(value)
    if parsed is None:
        raise BadRequest(field, f"{_shown(value)} is not a date; use YYYYMMDD or YYYY-MM-DD")
    return parsed


def _time(request: Message, field: str) -> dt.datetime | None:
    if not request.HasField(field):
        return None
    stamp: Timestamp = getattr(request, field)
    try:
        return stamp.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise BadRequest(field, "is outside the supported time range") from None
