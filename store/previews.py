"""The representative instance of a series: its header and its preview, nearest the middle.

Receivers send, with an update, the header of the middle instance of what *they* received
of the series, and later a preview report (one instance's PNG, or why there is none). With
a series split over flushes, associations or receiver replicas, each candidate is the
middle of a part. The store keeps, per series, the candidate whose instance is nearest the
middle of the whole series as stored:

- the series' stored instances are ordered by (instance_number ASC NULLS LAST,
  slice_position ASC NULLS LAST, sop_instance_uid in byte order) and the middle is the one
  at index (n - 1) // 2 (Series.representative_sop_instance_uid in the proto);
- a candidate's distance is |its index - the middle's index|; a candidate whose instance
  is not stored (yet), or not named (a header sent without
  representative_sop_instance_uid, or stored before migration 0004), ranks after every
  stored one;
- the stored choice is replaced only by a strictly nearer candidate: equal distance keeps
  what is stored, so re-sending a report changes nothing and the order reports arrive in
  only matters between equally near candidates;
- for previews, a rendered PNG beats a failure of the same distance (a receiver that could
  not decode one instance may decode another, or decode it later).

The choice is made when a candidate arrives, never re-made alone: when later instances
move the middle, the next candidate (every flush sends one) moves the choice with it.
Callers hold the series' decision lock (store.completion.lock_series), so the stored
instances and the stored choice cannot change between the ranking and the write.

A preview report for a series that has no row yet stores nothing and is acked: receivers
send previews only after the series' instances were acked, so this happens only when an
operator deleted the series in between; the preview would have nothing to describe.
Preview writes are not series events (the event feed tells of instances and completion).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from seriesflow.store import request_fields
from seriesflow.store.database import Connection
from seriesflow.store.errors import NotFound
from seriesflow.store.validation import ValidPreview, ValidUpdate
from seriesflow.v1 import series_store_pb2 as pb

UNSTORED = math.inf  # the distance of an instance that is not stored (yet)

# The middle ordering (see the module docstring). COLLATE "C": UIDs compare byte by byte,
# as receivers compare them, whatever the database's collation.
_RANKS = """
    SELECT series_fk, sop_instance_uid, abs(rank - (n - 1) / 2) AS distance
    FROM (
        SELECT series_fk, sop_instance_uid,
               row_number() OVER (
                   PARTITION BY series_fk
                   ORDER BY instance_number ASC NULLS LAST, slice_position ASC NULLS LAST,
                            sop_instance_uid COLLATE "C") - 1 AS rank,
               count(*) OVER (PARTITION BY series_fk) AS n
        FROM instances WHERE series_fk = ANY(%b::bigint[])
    ) AS ordered
    WHERE sop_instance_uid = ANY(%b::text[])
"""


async def distances(conn: Connection, wanted: dict[int, set[str]]) -> dict[tuple[int, str], float]:
    """(series id, SOP UID) -> distance from its series' middle, for each wanted UID that is
    stored in that series (absent ones are UNSTORED: use `distance_of`)."""
    if not wanted:
        return {}
    sops = sorted({sop for uids in wanted.values() for sop in uids if sop})
    cur = await conn.execute(_RANKS, [sorted(wanted), sops])
    rows: list[tuple[Any, ...]] = await cur.fetchall()
    return {(int(fk), str(sop)): float(d) for fk, sop, d in rows if sop in wanted[int(fk)]}


def distance_of(found: dict[tuple[int, str], float], series_id: int, sop: str) -> float:
    return found.get((series_id, sop), UNSTORED) if sop else UNSTORED


# -- representative headers ----------------------------------------------------------------


async def choose_headers(
    conn: Connection, updates: Iterable[ValidUpdate], series_ids: dict[str, int]
) -> int:
    """Apply the rule to the round's headers for series that already had a row (a new row
    took its update's header when inserted). Returns how many headers were replaced."""
    candidates = {series_ids[u.series_uid]: u for u in updates if u.header_json is not None}
    if not candidates:
        return 0
    cur = await conn.execute(
        """SELECT id, representative_sop_instance_uid, representative_header IS NOT NULL
           FROM series WHERE id = ANY(%b::bigint[])""",
        [sorted(candidates)],
    )
    stored = {int(r[0]): (str(r[1]), bool(r[2])) for r in await cur.fetchall()}  # type: ignore[call-overload]
    # No stored header: the candidate wins without a ranking. The same instance: a tie.
    contested = {
        fk: {u.header_sop_uid, stored[fk][0]}
        for fk, u in candidates.items()
        if stored[fk][1] and u.header_sop_uid != stored[fk][0]
    }
    found = await distances(conn, contested)
    winners = [
        (fk, u)
        for fk, u in sorted(candidates.items())
        if not stored[fk][1]
        or (
            fk in contested
            and distance_of(found, fk, u.header_sop_uid) < distance_of(found, fk, stored[fk][0])
        )
    ]
    if winners:
        await conn.execute(
            """UPDATE series s SET representative_header = c.header::jsonb,
                                   representative_sop_instance_uid = c.sop
               FROM unnest(%b::bigint[], %b::text[], %b::text[]) AS c(id, header, sop)
               WHERE s.id = c.id""",
            [
                [fk for fk, _ in winners],
                [u.header_json for _, u in winners],
                [u.header_sop_uid for _, u in winners],
            ],
        )
    return len(winners)


# -- previews ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    series_id: int
    sop: str | None  # None: no preview stored
    rendered: bool


async def merge_previews(conn: Connection, previews: list[ValidPreview]) -> int:
    """Store each preview that beats its series' stored one (at most one report per series
    here: store.ingest.rounds). Returns how many were written."""
    if not previews:
        return 0
    cur = await conn.execute(
        """SELECT s.series_instance_uid, s.id, p.sop_instance_uid, length(p.png) > 0
           FROM series s LEFT JOIN series_previews p ON p.series_fk = s.id
           WHERE s.series_instance_uid = ANY(%b::text[])""",
        [[p.series_uid for p in previews]],
    )
    rows: list[tuple[Any, ...]] = await cur.fetchall()
    stored = {str(uid): _Stored(int(fk), sop, bool(rendered)) for uid, fk, sop, rendered in rows}
    known = [p for p in previews if p.series_uid in stored]  # no row yet: nothing to keep
    contested = {
        stored[p.series_uid].series_id: {p.sop_instance_uid, stored[p.series_uid].sop or ""}
        for p in known
        if stored[p.series_uid].sop is not None
    }
    found = await distances(conn, contested)

    def beats(p: ValidPreview) -> bool:
        s = stored[p.series_uid]
        if s.sop is None:
            return True
        mine = (distance_of(found, s.series_id, p.sop_instance_uid), not p.png)
        theirs = (distance_of(found, s.series_id, s.sop), not s.rendered)
        return mine < theirs

    winners = sorted((p for p in known if beats(p)), key=lambda p: p.series_uid)
    if not winners:
        return 0
    columns: list[list[Any]] = [
        [stored[p.series_uid].series_id for p in winners],
        [p.sop_instance_uid for p in winners],
        [p.png for p in winners],
        [p.width for p in winners],
        [p.height for p in winners],
        [p.frame for p in winners],
        [p.window for p in winners],
        [p.window_center for p in winners],
        [p.window_width for p in winners],
        [p.failure_reason for p in winners],
        [p.failure_detail for p in winners],
        [p.rendered_us for p in winners],
    ]
    await conn.execute(
        """
        INSERT INTO series_previews AS p (series_fk, sop_instance_uid, png, width, height,
            frame, "window", window_center, window_width, failure_reason, failure_detail,
            rendered_at)
        SELECT fk, sop, png, w, h, f, win, wc, ww, fr, fd,
               timestamptz 'epoch' + us * interval '1 microsecond'
        FROM unnest(%b::bigint[], %b::text[], %b::bytea[], %b::int[], %b::int[], %b::int[],
                    %b::text[], %b::float8[], %b::float8[], %b::text[], %b::text[],
                    %b::bigint[]) AS t(fk, sop, png, w, h, f, win, wc, ww, fr, fd, us)
        ON CONFLICT (series_fk) DO UPDATE SET
            sop_instance_uid = EXCLUDED.sop_instance_uid, png = EXCLUDED.png,
            width = EXCLUDED.width, height = EXCLUDED.height, frame = EXCLUDED.frame,
            "window" = EXCLUDED."window", window_center = EXCLUDED.window_center,
            window_width = EXCLUDED.window_width, failure_reason = EXCLUDED.failure_reason,
            failure_detail = EXCLUDED.failure_detail, rendered_at = EXCLUDED.rendered_at,
            updated_at = now()
        """,
        columns,
    )
    return len(winners)


# -- reading -------------------------------------------------------------------------------


async def get_series_preview(conn: Connection, req: pb.GetSeriesPreviewRequest) -> pb.SeriesPreview:
    """GetSeriesPreview: NOT_FOUND for an unknown series; failure_reason "pending" while
    no preview is stored."""
    uid = request_fields.uid(req.series_instance_uid, "series_instance_uid", required=True)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT s.series_instance_uid AS series_uid, p.*
               FROM series s LEFT JOIN series_previews p ON p.series_fk = s.id
               WHERE s.series_instance_uid = %(uid)s""",
            {"uid": uid},
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no series {uid!r} in the catalog")
    if row["series_fk"] is None:
        return pb.SeriesPreview(
            series_instance_uid=uid,
            failure_reason="pending",
            failure_detail="no preview received for this series yet",
        )
    out = pb.SeriesPreview(
        series_instance_uid=uid,
        sop_instance_uid=row["sop_instance_uid"],
        png=bytes(row["png"]),
        width=row["width"],
        height=row["height"],
        frame=row["frame"],
        window=row["window"],
        window_center=row["window_center"],
        window_width=row["window_width"],
        failure_reason=row["failure_reason"],
        failure_detail=row["failure_detail"],
    )
    out.rendered_at.FromDatetime(row["rendered_at"])
    return out


@dataclass(frozen=True)
class SeriesPreviewState:
    """One series of a contact sheet: what its caption says and whether it has a PNG."""

    series_uid: str
    series_number: int | None
    description: str
    modality: str
    num_instances: int
    status: str
    has_png: bool
    width: int
    height: int
    failure_reason: str  # "pending" when no report arrived


@dataclass(frozen=True)
class StudyPreviews:
    study_uid: str
    description: str
    date: str
    series: list[SeriesPreviewState]


async def study_previews(conn: Connection, study_uid: str) -> StudyPreviews:
    """Every series of a study with its preview's state (not the PNG), in series number
    order; NotFound for an unknown study."""
    uid = request_fields.uid(study_uid, "study_instance_uid", required=True)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """SELECT id, study_description, study_date FROM studies
               WHERE study_instance_uid = %(uid)s""",
            {"uid": uid},
        )
        study = await cur.fetchone()
        if study is None:
            raise NotFound(f"no study {uid!r} in the catalog")
        await cur.execute(
            """SELECT s.series_instance_uid, s.series_number, s.series_description,
                      s.modality, s.num_instances, s.status,
                      COALESCE(length(p.png) > 0, false) AS has_png,
                      COALESCE(p.width, 0) AS width, COALESCE(p.height, 0) AS height,
                      COALESCE(p.failure_reason, 'pending') AS failure_reason
               FROM series s LEFT JOIN series_previews p ON p.series_fk = s.id
               WHERE s.study_fk = %(fk)s
               ORDER BY s.series_number NULLS LAST, s.series_instance_uid""",
            {"fk": study["id"]},
        )
        rows = await cur.fetchall()
    return StudyPreviews(
        study_uid=uid,
        description=study["study_description"],
        date=study["study_date"].isoformat() if study["study_date"] else "",
        series=[
            SeriesPreviewState(
                series_uid=r["series_instance_uid"],
                series_number=r["series_number"],
                description=r["series_description"],
                modality=r["modality"],
                num_instances=r["num_instances"],
                status=r["status"],
                has_png=r["has_png"],
                width=r["width"],
                height=r["height"],
                failure_reason=r["failure_reason"],
            )
            for r in rows
        ],
    )
