"""Instance rows: insert the new ones, classify the rest, fold exact counts into series.

Called by store.ingest with the round's series rows already upserted, which holds their
row locks: no other transaction can add instances to these series until we commit, so
"which of these SOP UIDs already exist" cannot change under us for our own series.

Fast path (every instance new, the common case): COPY the rows straight into `instances`
inside a savepoint. If any SOP UID already exists (a re-send, a duplicate, another series
holding it, or a concurrent writer claiming it for another series right now) the COPY fails
with a unique violation, the savepoint rolls back, and the slow path runs: INSERT ... ON
CONFLICT DO NOTHING RETURNING, then a lookup of who holds the rest. That path is correct
under any interleaving; the fast one is only taken when it provably inserted everything.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field
from itertools import compress

import psycopg.errors

from seriesflow.store.database import Connection
from seriesflow.store.validation import ValidUpdate

_COPY = (
    "COPY instances (sop_instance_uid, series_fk, sop_class_uid, instance_number,"
    " transfer_syntax_uid, size_bytes, received_at, slice_position) FROM STDIN (FORMAT BINARY)"
)
# PostgreSQL's binary COPY format (see the COPY docs, "Binary Format"): a signature, flags
# and header-extension length, then per row a field count and (length, bytes) per field.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)  # a NULL field: length -1, no bytes
_FLOAT8 = struct.Struct(">id")  # a float8 field: length 8, IEEE 754 double, big-endian
_PG_EPOCH_US = 946_684_800_000_000
_BIGINT_MAX = 2**63 - 1  # 2000-01-01, the zero of PostgreSQL timestamps


@dataclass
class SeriesState:
    num_instances: int
    status: str  # a text of store.vocabulary.STATUS_TO_PB: RECEIVING or COMPLETE


@dataclass
class Claim:
    """An instance an update claimed for its series that another series already holds."""

    sop_instance_uid: str
    holder_series_uid: str
    update: ValidUpdate


@dataclass
class Outcome:
    states: dict[int, SeriesState] = field(default_factory=dict)  # by series id
    added: dict[int, int] = field(default_factory=dict)  # instances inserted, by series id
    last_received_at: dict[int, dt.datetime | None] = field(default_factory=dict)
    new: int = 0
    duplicate: int = 0
    claims: list[Claim] = field(default_factory=list)


@dataclass
class _Rows:
    """One update's instance rows that are to be inserted (a filtered view of its columns)."""

    update: ValidUpdate
    series_id: int
    keep: list[bool] | None = None  # None = every row

    def column(self, values: list[object]) -> list[object]:
        return values if self.keep is None else list(compress(values, self.keep))

    def count(self) -> int:
        return len(self.update.instances) if self.keep is None else sum(self.keep)


async def insert(
    conn: Connection, updates: list[ValidUpdate], series_ids: dict[str, int]
) -> Outcome:
    out = Outcome()
    pending, not_inserted = _in_round(updates, series_ids)
    try:
        async with conn.transaction():  # a savepoint: the COPY may lose a race
            await _copy(conn, pending)
        inserted = pending
    except psycopg.errors.UniqueViolation:
        inserted, lost = await _insert_racing(conn, pending)
        not_inserted += lost
    if not_inserted:
        await _classify(conn, not_inserted, out)
    out.new = sum(rows.count() for rows in inserted)
    await _fold(conn, updates, series_ids, inserted, out)
    return out


def _in_round(
    updates: list[ValidUpdate], series_ids: dict[str, int]
) -> tuple[list[_Rows], list[tuple[str, ValidUpdate]]]:
    """Every update's rows, minus SOP UIDs an earlier series of this round also claims
    (updates come sorted by series UID, so the first series of the round tries first).
    The held-back claims are returned, to be classified once the insert shows who won."""
    pending = [_Rows(u, series_ids[u.series_uid]) for u in updates]
    sops = [sop for u in updates for sop in u.instances.sop_instance_uid]
    if len(sops) == len(set(sops)):
        return pending, []
    first: dict[str, str] = {}
    held_back: list[tuple[str, ValidUpdate]] = []
    for rows in pending:
        keep = []
        for sop in rows.update.instances.sop_instance_uid:
            tries = first.setdefault(sop, rows.update.series_uid) == rows.update.series_uid
            keep.append(tries)
            if not tries:
                held_back.append((sop, rows.update))
        rows.keep = keep
    return pending, held_back


async def _copy(conn: Connection, pending: list[_Rows]) -> None:
    async with conn.cursor() as cur, cur.copy(_COPY) as copy:
        await copy.write(_binary_rows(pending))


def _binary_rows(pending: list[_Rows]) -> bytes:
    """The rows as one binary COPY payload, packed with struct (no per-value adapters)."""
    parts = [_SIGNATURE]
    structs: dict[tuple[int, int, int, int], struct.Struct] = {}
    encoded: dict[str, bytes] = {}  # SOP class and transfer syntax UIDs repeat
    numbers: dict[int | None, bytes] = {}  # and so do instance numbers
    pack_float8 = _FLOAT8.pack
    for rows in pending:
        inst = rows.update.instances
        fk = rows.series_id
        for sop, cls, number, syntax, size, us, position in zip(
            rows.column(inst.sop_instance_uid),  # type: ignore[arg-type]
            rows.column(inst.sop_class_uid),  # type: ignore[arg-type]
            rows.column(inst.instance_number),  # type: ignore[arg-type]
            rows.column(inst.transfer_syntax_uid),  # type: ignore[arg-type]
            rows.column(inst.size_bytes),  # type: ignore[arg-type]
            rows.column(inst.received_us),  # type: ignore[arg-type]
            rows.column(inst.slice_position),  # type: ignore[arg-type]
            strict=True,
        ):
            sop_b = sop.encode()
            cls_b = encoded.get(cls) or encoded.setdefault(cls, cls.encode())
            syn_b = encoded.get(syntax) or encoded.setdefault(syntax, syntax.encode())
            num_b = numbers.get(number) or numbers.setdefault(number, _int4_field(number))
            key = (len(sop_b), len(cls_b), len(num_b), len(syn_b))
            packer = structs.get(key) or structs.setdefault(key, _row_struct(*key))
            fields = (8, key[0], sop_b, 8, fk, key[1], cls_b, num_b, key[3], syn_b)
            parts.append(packer.pack(*fields, 8, size, 8, us - _PG_EPOCH_US))
            # The float8 field ends the row; packed apart (it is NULL or 12 bytes).
            parts.append(_NULL if position is None else pack_float8(8, position))
    parts.append(_TRAILER)
    return b"".join(parts)


def _int4_field(value: int | None) -> bytes:
    """An int4 field: its length and value, or NULL (length -1, no bytes)."""
    return _NULL if value is None else struct.pack(">ii", 4, value)


def _row_struct(sop: int, cls: int, number: int, syntax: int) -> struct.Struct:
    # field count, then (length, bytes) per field; the int4 field comes pre-packed
    return struct.Struct(f">hi{sop}siqi{cls}s{number}si{syntax}siqiq")


async def _insert_racing(
    conn: Connection, pending: list[_Rows]
) -> tuple[list[_Rows], list[tuple[str, ValidUpdate]]]:
    """Slow path: insert what nobody holds; return the inserted rows and the rest."""
    columns: list[list[object]] = [[] for _ in range(8)]
    for rows in pending:
        inst = rows.update.instances
        columns[0] += [rows.series_id] * rows.count()
        columns[1] += rows.column(inst.sop_instance_uid)  # type: ignore[arg-type]
        columns[2] += rows.column(inst.sop_class_uid)  # type: ignore[arg-type]
        columns[3] += rows.column(inst.instance_number)  # type: ignore[arg-type]
        columns[4] += rows.column(inst.transfer_syntax_uid)  # type: ignore[arg-type]
        columns[5] += rows.column(inst.size_bytes)  # type: ignore[arg-type]
        columns[6] += rows.column(inst.received_us)  # type: ignore[arg-type]
        columns[7] += rows.column(inst.slice_position)  # type: ignore[arg-type]
    cur = await conn.execute(
        """INSERT INTO instances (series_fk, sop_instance_uid, sop_class_uid, instance_number,
                                  transfer_syntax_uid, size_bytes, received_at, slice_position)
           SELECT fk, sop, cls, num, ts, size,
                  timestamptz 'epoch' + us * interval '1 microsecond', pos
           FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::int[], %b::text[],
                       %b::bigint[], %b::bigint[], %b::float8[])
                AS t(fk, sop, cls, num, ts, size, us, pos)
           ORDER BY sop
           ON CONFLICT (sop_instance_uid) DO NOTHING
           RETURNING sop_instance_uid""",
        columns,
    )
    inserted_sops = {str(r[0]) for r in await cur.fetchall()}
    inserted: list[_Rows] = []
    lost: list[tuple[str, ValidUpdate]] = []
    for rows in pending:
        inst = rows.update.instances
        keep = rows.keep or [True] * len(inst)
        new_keep = []
        for sop, tried in zip(inst.sop_instance_uid, keep, strict=True):
            won = tried and sop in inserted_sops
            new_keep.append(won)
            if tried and not won:
                lost.append((sop, rows.update))
        inserted.append(_Rows(rows.update, rows.series_id, new_keep))
    return inserted, lost


async def _classify(
    conn: Connection, not_inserted: list[tuple[str, ValidUpdate]], out: Outcome
) -> None:
    """A claim not inserted is a duplicate if its own series holds the UID, else a conflict
    (the holder is committed by now: ON CONFLICT waited for it)."""
    cur = await conn.execute(
        """SELECT i.sop_instance_uid, s.series_instance_uid
           FROM instances i JOIN series s ON s.id = i.series_fk
           WHERE i.sop_instance_uid = ANY(%b::text[])""",
        [[sop for sop, _ in not_inserted]],
    )
    holder = {str(r[0]): str(r[1]) for r in await cur.fetchall()}
    for sop, update in not_inserted:
        if holder.get(sop) == update.series_uid:
            out.duplicate += 1
        else:
            out.claims.append(Claim(sop, holder.get(sop, ""), update))


async def _fold(
    conn: Connection,
    updates: list[ValidUpdate],
    series_ids: dict[str, int],
    inserted: list[_Rows],
    out: Outcome,
) -> None:
    """Add exactly the inserted rows to their series, studies and patients (under the
    series row locks). Status is left to store.completion; see store.ingest."""
    added = {rows.series_id: rows for rows in inserted}
    ids, counts, sizes, firsts, lasts = [], [], [], [], []
    for u in updates:
        series_id = series_ids[u.series_uid]
        rows = added[series_id]
        received = rows.column(u.instances.received_us)  # type: ignore[arg-type]
        ids.append(series_id)
        counts.append(len(received))
        # Each size is at most validation.MAX_INSTANCE_SIZE; the sum still saturates at
        # bigint's maximum, as the series total does.
        sizes.append(min(sum(rows.column(u.instances.size_bytes)), _BIGINT_MAX))  # type: ignore[arg-type]
        firsts.append(min(received) if received else None)  # type: ignore[type-var]
        lasts.append(max(received) if received else None)  # type: ignore[type-var]
    cur = await conn.execute(
        """
        WITH added AS (
            SELECT series_fk, n, bytes,
                   timestamptz 'epoch' + first_us * interval '1 microsecond' AS first_at,
                   timestamptz 'epoch' + last_us * interval '1 microsecond' AS last_at
            FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[],
                        %b::bigint[]) AS t(series_fk, n, bytes, first_us, last_us)
        ), upd AS (
            UPDATE series s SET
                num_instances = s.num_instances + a.n,
                -- saturates instead of failing "bigint out of range": a total is a
                -- statistic, and an overflow would fail every later update of the series
                total_size_bytes = LEAST(s.total_size_bytes::numeric + a.bytes,
                                         9223372036854775807)::bigint,
                first_received_at = LEAST(s.first_received_at, a.first_at),
                last_received_at = GREATEST(s.last_received_at, a.last_at)
            FROM added a
            WHERE s.id = a.series_fk
            RETURNING s.id, s.study_fk, s.num_instances, s.status, a.n, a.first_at, a.last_at,
                      s.last_received_at AS series_last
        ), study_added AS (
            SELECT study_fk, min(first_at) AS first_at, max(last_at) AS last_at
            FROM upd WHERE n > 0 GROUP BY study_fk
        ), upd_study AS (
            UPDATE studies st SET
                first_received_at = LEAST(st.first_received_at, sa.first_at),
                last_received_at = GREATEST(st.last_received_at, sa.last_at)
            FROM study_added sa WHERE st.id = sa.study_fk
            RETURNING st.patient_fk, sa.last_at
        ), upd_patient AS (
            UPDATE patients p SET last_received_at = GREATEST(p.last_received_at, x.last_at)
            FROM (SELECT patient_fk, max(last_at) AS last_at FROM upd_study
                  GROUP BY patient_fk) AS x
            WHERE p.id = x.patient_fk
        )
        SELECT id, num_instances, status, n, series_last FROM upd
        """,
        [ids, counts, sizes, firsts, lasts],
    )
    for row in await cur.fetchall():
        series_id = int(row[0])  # type: ignore[call-overload]
        out.states[series_id] = SeriesState(int(row[1]), str(row[2]))  # type: ignore[call-overload]
        out.added[series_id] = int(row[3])  # type: ignore[call-overload]
        out.last_received_at[series_id] = row[4]  # type: ignore[assignment]
