"""The catalog's words: a series' status and completion reason as PostgreSQL stores them
(text) and as the API speaks them (the proto enums SeriesStatus, CompletionReason).

Each map is written once, here; its inverse is derived. The texts are exactly those the
CHECK constraints series_status_known and series_completion_reason_known allow
(migrations/versions/0001, 0003). tests/store/test_vocabulary.py checks every enum value
against these maps and the maps against the schema.

SERIES_STATUS_UNSPECIFIED has no text: a stored series is RECEIVING or COMPLETE, and in a
ListSeries request it means "any status". COMPLETION_REASON_UNSPECIFIED has one: it is
what a receiver sends when it did not say why it flushed the series.
"""

from __future__ import annotations

from typing import Final

from seriesflow.v1 import series_store_pb2 as pb

STATUS_TO_PB: Final[dict[str, pb.SeriesStatus]] = {
    "RECEIVING": pb.SERIES_STATUS_RECEIVING,
    "COMPLETE": pb.SERIES_STATUS_COMPLETE,
}
STATUS_FROM_PB: Final = {value: text for text, value in STATUS_TO_PB.items()}

REASON_TO_PB: Final[dict[str, pb.CompletionReason]] = {
    "UNSPECIFIED": pb.COMPLETION_REASON_UNSPECIFIED,
    "IDLE": pb.COMPLETION_REASON_IDLE,
    "RELEASED": pb.COMPLETION_REASON_RELEASED,
    "MAX_AGE": pb.COMPLETION_REASON_MAX_AGE,
    "HOLD_EXPIRED": pb.COMPLETION_REASON_HOLD_EXPIRED,
}
REASON_FROM_PB: Final = {value: text for text, value in REASON_TO_PB.items()}
