"""The series event log: written in the transaction of the change, read by WatchSeries.

Writing (`write`) takes the next cursors from the single row of `series_event_log` and
inserts the events, then NOTIFYs `CHANNEL` (delivered at commit). The counter row stays
locked until the transaction ends, so cursors are gapless and ordered like the commits:
a reader whose snapshot shows `last_cursor = N` sees every event up to N (see
migrations/versions/0003). Writers call it as the last step of their transaction.

Reading (`read`) returns, in cursor order, the events of a cursor range that match a
watcher's filters, each with its series as ListSeries returns it (num_instances and status
as of the event, the other attributes as stored now), plus the log's end in the same
snapshot, so a watcher can move past events its filters skipped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg.rows import dict_row

from seriesflow.store.database import Connection

CHANNEL: Final = "seriesflow_series_events"
KINDS: Final = ("CREATED", "INSTANCES_ADDED", "COMPLETED", "REOPENED")


@dataclass
class Event:
    """One change to a series, to be written to the event log with the transaction."""

    series_id: int
    kind: str  # one of KINDS
    version: int
    reason: str
    detail: str
    added: int
    num_instances: int
    status: str


@dataclass(frozen=True)
class Bounds:
    last_cursor: int
    pruned_through: int


@dataclass(frozen=True)
class Filters:
    kinds: tuple[str, ...]  # empty: every kind
    modality: str
    calling_ae_title: str


async def write(conn: Connection, events: Sequence[Event]) -> int | None:
    """Append `events` (in order); returns the last cursor, or None when there were none."""
    if not events:
        return None
    cur = await conn.execute(
        "UPDATE series_event_log SET last_cursor = last_cursor + %s WHERE id = 1"
        " RETURNING last_cursor",
        [len(events)],
    )
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("series_event_log has no row: the schema is not at head")
    last: int = row[0]  # type: ignore[assignment]
    first = last - len(events) + 1
    await conn.execute(
        """
        INSERT INTO series_events (cursor, series_fk, kind, completion_version,
                                   completion_reason, completion_detail, instances_added,
                                   num_instances, status)
        SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::int[], %b::text[],
                             %b::text[], %b::bigint[], %b::bigint[], %b::text[])
        """,
        [
            list(range(first, last + 1)),
            [e.series_id for e in events],
            [e.kind for e in events],
            [e.version for e in events],
            [e.reason for e in events],
            [e.detail for e in events],
            [e.added for e in events],
            [e.num_instances for e in events],
            [e.status for e in events],
        ],
    )
    await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(last)])
    return last


async def bounds(conn: Connection) -> Bounds:
    cur = await conn.execute(
        "SELECT last_cursor, pruned_through FROM series_event_log WHERE id = 1"
    )
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("series_event_log has no row: the schema is not at head")
    return Bounds(int(row[0]), int(row[1]))  # type: ignore[call-overload]


_READ = """
    WITH log AS (SELECT last_cursor, pruned_through FROM series_event_log WHERE id = 1)
    SELECT log.last_cursor AS log_end, log.pruned_through AS log_pruned, ev.*
    FROM log LEFT JOIN LATERAL (
        SELECT e.cursor, e.kind, e.occurred_at, e.completion_version AS event_version,
               e.completion_reason AS event_reason, e.completion_detail AS event_detail,
               e.instances_added, e.num_instances AS event_num_instances,
               e.status AS event_status,
               s.id, s.series_instance_uid, st.study_instance_uid, p.patient_id,
               p.patient_name, p.issuer_of_patient_id, s.modality, s.series_number,
               s.series_description, s.num_instances, s.status, s.first_received_at,
               s.last_received_at, st.study_date, st.study_description, st.accession_number,
               s.body_part_examined, s.manufacturer, s.manufacturer_model_name,
               s.station_name, s.institution_name, s.series_date, s.protocol_name,
               s.source_ae_title, s.receiver_id, s.completion_reason, s.completed_at,
               s.total_size_bytes, s.text_decoding_fallbacks, s.completion_version,
               s.completion_detail, s.representative_sop_instance_uid
        FROM series_events e
        JOIN series s ON s.id = e.series_fk
        JOIN studies st ON st.id = s.study_fk
        JOIN patients p ON p.id = s.patient_fk
        WHERE e.cursor > %(after)s AND e.cursor <= LEAST(%(upto)s, log.last_cursor)
          AND (cardinality(%(kinds)s::text[]) = 0 OR e.kind = ANY(%(kinds)s::text[]))
          AND (%(modality)s = '' OR (catalog_key(s.modality) = catalog_key(%(modality)s)
                                     AND s.modality = %(modality)s))
          AND (%(ae)s = '' OR s.source_ae_title = %(ae)s)
    ) AS ev ON true
    ORDER BY ev.cursor
"""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]  # matching events, in cursor order
    end: int  # the cursor the range really ended at (the log's end when that is sooner)
    bounds: Bounds  # the log as the same snapshot saw it


async def read(conn: Connection, after: int, span: int, filters: Filters) -> Page:
    """Matching events with cursor in (after, after + span], all read in one snapshot."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _READ,
            {
                "after": after,
                "upto": after + span,
                "kinds": list(filters.kinds),
                "modality": filters.modality,
                "ae": filters.calling_ae_title,
            },
        )
        rows = await cur.fetchall()
    if not rows:
        raise RuntimeError("series_event_log has no row: the schema is not at head")
    log = Bounds(int(rows[0]["log_end"]), int(rows[0]["log_pruned"]))
    events = [r for r in rows if r["cursor"] is not None]
    return Page(events, min(after + span, log.last_cursor), log)


async def prune(conn: Connection, older_than: dt.datetime, batch: int) -> int:
    """Delete up to `batch` of the oldest events that occurred before `older_than` (a
    prefix of the log, so `pruned_through` marks exactly what is gone); returns how many."""
    cur = await conn.execute(
        """
        WITH doomed AS (
            SELECT cursor FROM series_events WHERE occurred_at < %s
            ORDER BY cursor LIMIT %s
        ), gone AS (
            DELETE FROM series_events
            WHERE cursor <= (SELECT max(cursor) FROM doomed)
            RETURNING cursor
        )
        SELECT count(*), max(cursor) FROM gone
        """,
        [older_than, batch],
    )
    row = await cur.fetchone()
    count, through = (int(str(row[0])), row[1]) if row else (0, None)
    if through is not None:
        await conn.execute(
            "UPDATE series_event_log SET pruned_through = GREATEST(pruned_through, %s)"
            " WHERE id = 1",
            [through],
        )
    return count
