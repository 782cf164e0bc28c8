"""Every status and completion reason has one text, the round trip holds, and the texts are
exactly the ones the schema's CHECK constraints allow."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import re

from st_harness import migrated_url, rows  # noqa: F401 (fixtures)

from seriesflow.store.vocabulary import (
    REASON_FROM_PB,
    REASON_TO_PB,
    STATUS_FROM_PB,
    STATUS_TO_PB,
)
from seriesflow.v1 import series_store_pb2 as pb


def test_every_series_status_but_unspecified_has_a_text_that_round_trips() -> None:
    stored = [v for v in pb.SeriesStatus.values() if v != pb.SERIES_STATUS_UNSPECIFIED]
    assert sorted(STATUS_FROM_PB) == sorted(stored)
    for value in stored:
        assert STATUS_TO_PB[STATUS_FROM_PB[value]] == value
    assert len(STATUS_TO_PB) == len(STATUS_FROM_PB)  # one text per value


def test_every_completion_reason_has_a_text_that_round_trips() -> None:
    # UNSPECIFIED included: a receiver that does not say why it flushed sends it.
    assert sorted(REASON_FROM_PB) == sorted(pb.CompletionReason.values())
    for value in pb.CompletionReason.values():
        assert REASON_TO_PB[REASON_FROM_PB[value]] == value
    assert len(REASON_TO_PB) == len(REASON_FROM_PB)


def _allowed_texts(url: str, constraint: str) -> set[str]:
    """The string literals of a CHECK constraint, as PostgreSQL has it at head."""
    [(definition,)] = rows(
        url, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s", constraint
    )
    return {text.replace("''", "'") for text in re.findall(r"'((?:[^']|'')*)'", definition)}


def test_texts_are_the_ones_the_schema_allows(migrated_url: str) -> None:
    assert _allowed_texts(migrated_url, "series_status_known") == set(STATUS_TO_PB)
    assert _allowed_texts(migrated_url, "series_completion_reason_known") == set(REASON_TO_PB)
