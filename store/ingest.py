"""Idempotent, order-free merge of validated SeriesUpdates into the catalog.

`merge(conn, updates)` writes a batch of updates (group commit: the caller runs it in one
transaction and acks each update only after that commits). Rules, all idempotent:

- Identity. Patients are keyed by (PatientID, IssuerOfPatientID), studies by
  StudyInstanceUID, series by SeriesInstanceUID, instances by SOPInstanceUID. Text of any
  length is stored as received: its unique indexes hold the SHA-256 of the text
  (`catalog_key`, migrations/versions/0002), not the text.
- Instances. An instance is stored once (SOPInstanceUID is the primary key; see
  store.instances for the COPY fast path and the ON CONFLICT DO NOTHING slow path);
  re-sending it is a "duplicate" and changes nothing. num_instances and total_size_bytes
  are increased by exactly the rows this transaction inserted, under the series' row lock,
  so they equal the number of distinct SOPInstanceUIDs with any number of concurrent
  writers. first/last_received_at are the min/max received_at of the stored instances.
- Conflict: instance_in_other_series. A SOPInstanceUID already stored under another series
  stays with the series that stored it first; the update's claim is counted and recorded
  in merge_conflicts (subject = the SOP UID, kept = holding series, rejected = claimed one).
- Conflict: study_patient_mismatch. A study keeps the patient of the first update that
  named it. A later update naming another (PatientID, Issuer) is still merged into the
  study; the mismatch is counted and recorded. The other patient's own row is still
  created/updated from the update (so an operator can find it), with no study.
- Conflict: series_study_mismatch. Likewise, a series keeps its first study.
- Attributes. Text attributes take the latest non-empty value received; empty never
  erases. Text-decoding fallbacks accumulate (a set).
- Representative header and preview. Of the headers (and, from preview reports, the
  previews) received for a series, the one whose instance is nearest the middle of the
  series' stored instances is kept; a tie keeps the stored one (store.previews). A preview
  report for a series with no row yet stores nothing.
- Completion is decided from every receiver's reports by store.completion (hold reports
  and updates of all receivers, under a per-series lock); a new series starts RECEIVING.
- Events. Every change (created, instances added, reopened, completed) is appended to the
  event log in the same transaction, as its last step (store.events).

Locking. Each transaction first takes the decision lock of every series it touches
(store.completion.lock_series, in one order); then upserts touch rows in a fixed order
(patients by key, studies by UID, series by UID, conflicts by key), and each transaction
locks its series rows (by the upsert) before inserting their instances, so writers of
the same series queue instead of deadlocking.
The one remaining deadlock (two series claiming the same SOP UIDs in opposite orders at
the same moment) is detected by PostgreSQL and the transaction retried by Database.run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from seriesflow.store import completion, events, instances, previews
from seriesflow.store.completion import Completion, Policy, SeriesBefore
from seriesflow.store.database import Connection
from seriesflow.store.instances import SeriesState
from seriesflow.store.validation import (
    SERIES_TEXT,
    SOURCE_TEXT,
    STUDY_TEXT,
    ValidHold,
    ValidPreview,
    ValidUpdate,
)

Item = ValidUpdate | ValidHold | ValidPreview


@dataclass
class BatchResult:
    """What a committed batch did: per-series state for the acks, counts for metrics."""

    series: dict[str, SeriesState] = field(default_factory=dict)  # by series UID
    completions: list[Completion] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by kind
    holds_expired: int = 0
    previews_stored: int = 0
    new: int = 0
    duplicate: int = 0
    conflicts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True)
class _Conflict:
    kind: str
    subject_uid: str
    kept_value: str
    rejected_value: str
    update_id: str
    receiver_id: str


def rounds(updates: list[Item]) -> list[list[Item]]:
    """Split a batch so each series appears at most once per round, in arrival order.

    One statement cannot upsert a row twice; rounds also keep the per-update semantics
    (e.g. completion) identical to merging the updates one by one.
    """
    out: list[list[Item]] = []
    seen: dict[str, int] = defaultdict(int)
    for update in updates:
        k = seen[update.series_uid]
        seen[update.series_uid] += 1
        if k == len(out):
            out.append([])
        out[k].append(update)
    return [sorted(r, key=lambda u: u.series_uid) for r in out]


async def merge(conn: Connection, items: list[Item], policy: Policy) -> BatchResult:
    """Merge `items` (updates, hold and preview reports) inside the caller's transaction."""
    result = BatchResult()
    await completion.lock_series(conn, (item.series_uid for item in items))
    written: list[events.Event] = []
    for round_ in rounds(items):
        updates = [u for u in round_ if isinstance(u, ValidUpdate)]
        holds = [h for h in round_ if isinstance(h, ValidHold)]
        before = await _merge_round(conn, updates, result) if updates else {}
        # After the round's instances: a preview is ranked against the series as stored.
        result.previews_stored += await previews.merge_previews(
            conn, [p for p in round_ if isinstance(p, ValidPreview)]
        )
        if not updates and not holds:
            continue
        decided = await completion.decide_round(conn, updates, holds, before, policy)
        for uid, status in decided.status.items():
            state = result.series.get(uid)
            if state is None:
                result.series[uid] = SeriesState(before_count(before, uid), status)
            else:
                state.status = status
        result.completions += decided.completions
        result.holds_expired += decided.holds_expired
        written += decided.events
    for event in written:
        result.events[event.kind] += 1
    await events.write(conn, written)
    return result


def before_count(before: dict[str, SeriesBefore], uid: str) -> int:
    row = before.get(uid)
    return row.num_instances if row is not None else 0


def _latest_non_empty(rows: list[dict[str, object]]) -> dict[str, object]:
    merged = dict(rows[0])
    for row in rows[1:]:
        for key, value in row.items():
            if value not in ("", None):
                merged[key] = value
    return merged


async def _merge_round(
    conn: Connection, updates: list[ValidUpdate], result: BatchResult
) -> dict[str, SeriesBefore]:
    """Merge one round's updates; returns each series' row as the round found it."""
    conflicts: list[_Conflict] = []
    patient_ids = await _upsert_patients(conn, updates)
    study_rows = await _upsert_studies(conn, updates, patient_ids)
    study_patient = {uid: row[1] for uid, row in study_rows.items()}
    series_rows = await _upsert_series(conn, updates, study_rows)

    mismatched_patients = [
        u for u in updates if patient_ids[u.patient_key] != study_patient[u.study_uid]
    ]
    mismatched_studies = [
        u for u in updates if series_rows[u.series_uid][1] != study_rows[u.study_uid][0]
    ]
    if mismatched_patients or mismatched_studies:
        conflicts += await _describe_mismatches(
            conn, mismatched_patients, mismatched_studies, study_patient, series_rows
        )

    series_ids = {uid: row[0] for uid, row in series_rows.items()}
    outcome = await instances.insert(conn, updates, series_ids)
    # A new row took its update's header when inserted; the others compete for it now that
    # the round's instances are stored (they can move the middle).
    await previews.choose_headers(
        conn, [u for u in updates if not series_rows[u.series_uid][4]], series_ids
    )
    before: dict[str, SeriesBefore] = {}
    for update in updates:
        row = series_rows[update.series_uid]
        state = outcome.states[row[0]]
        result.series[update.series_uid] = state
        before[update.series_uid] = SeriesBefore(
            series_id=row[0],
            status=row[2],
            version=row[3],
            inserted=row[4],
            added=outcome.added[row[0]],
            num_instances=state.num_instances,
            last_received_at=outcome.last_received_at.get(row[0]),
        )
    conflicts += [
        _Conflict(
            "instance_in_other_series",
            c.sop_instance_uid,
            c.holder_series_uid,
            c.update.series_uid,
            c.update.update_id,
            str(c.update.series["receiver_id"]),
        )
        for c in outcome.claims
    ]
    result.new += outcome.new
    result.duplicate += outcome.duplicate + sum(u.instances.repeated for u in updates)
    if conflicts:
        await _record_conflicts(conn, conflicts)
        for conflict in conflicts:
            result.conflicts[conflict.kind] += 1
    return before


async def _upsert_patients(
    conn: Connection, updates: list[ValidUpdate]
) -> dict[tuple[str, str], int]:
    grouped: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for u in updates:
        grouped[u.patient_key].append(u.patient)
    rows = [_latest_non_empty(grouped[key]) for key in sorted(grouped)]
    cols = (
        "patient_id",
        "issuer_of_patient_id",
        "patient_name",
        "patient_birth_date",
        "patient_birth_date_raw",
        "patient_sex",
    )
    cur = await conn.execute(
        """
        INSERT INTO patients AS p (patient_id, issuer_of_patient_id, patient_name,
                                   patient_birth_date, patient_birth_date_raw, patient_sex)
        SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::date[], %b::text[],
                             %b::text[]) AS t(a, b, c, d, e, f)
        ORDER BY a, b
        ON CONFLICT ((catalog_key(patient_id)), (catalog_key(issuer_of_patient_id)))
        DO UPDATE SET
            patient_name = COALESCE(NULLIF(EXCLUDED.patient_name, ''), p.patient_name),
            patient_birth_date = CASE WHEN EXCLUDED.patient_birth_date_raw <> ''
                THEN EXCLUDED.patient_birth_date ELSE p.patient_birth_date END,
            patient_birth_date_raw = COALESCE(NULLIF(EXCLUDED.patient_birth_date_raw, ''),
                                              p.patient_birth_date_raw),
            patient_sex = COALESCE(NULLIF(EXCLUDED.patient_sex, ''), p.patient_sex)
        RETURNING id, patient_id, issuer_of_patient_id
        """,
        [[row[c] for row in rows] for c in cols],
    )
    return {(str(r[1]), str(r[2])): int(r[0]) for r in await cur.fetchall()}  # type: ignore[call-overload]


async def _upsert_studies(
    conn: Connection, updates: list[ValidUpdate], patient_ids: dict[tuple[str, str], int]
) -> dict[str, tuple[int, int]]:
    """Returns study UID -> (study id, patient id the study keeps)."""
    grouped: dict[str, list[dict[str, object]]] = defaultdict(list)
    proposed: dict[str, int] = {}
    for u in updates:
        grouped[u.study_uid].append(u.study)
        proposed.setdefault(u.study_uid, patient_ids[u.patient_key])
    rows = [_latest_non_empty(grouped[uid]) for uid in sorted(grouped)]
    cols = ("study_instance_uid", "study_date", "study_date_raw", *STUDY_TEXT)
    params: list[object] = [[proposed[str(row["study_instance_uid"])] for row in rows]]
    params += [[row[c] for row in rows] for c in cols]
    cur = await conn.execute(
        """
        INSERT INTO studies AS s (patient_fk, study_instance_uid, study_date, study_date_raw,
                                  study_time, study_description, accession_number, study_id,
                                  referring_physician_name)
        SELECT * FROM unnest(%b::bigint[], %b::text[], %b::date[], %b::text[], %b::text[],
                             %b::text[], %b::text[], %b::text[], %b::text[])
            AS t(a, b, c, d, e, f, g, h, i)
        ORDER BY b
        ON CONFLICT (study_instance_uid) DO UPDATE SET
            study_date = CASE WHEN EXCLUDED.study_date_raw <> ''
                THEN EXCLUDED.study_date ELSE s.study_date END,
            study_date_raw = COALESCE(NULLIF(EXCLUDED.study_date_raw, ''), s.study_date_raw),
            study_time = COALESCE(NULLIF(EXCLUDED.study_time, ''), s.study_time),
            study_description = COALESCE(NULLIF(EXCLUDED.study_description, ''),
                                         s.study_description),
            accession_number = COALESCE(NULLIF(EXCLUDED.accession_number, ''),
                                        s.accession_number),
            study_id = COALESCE(NULLIF(EXCLUDED.study_id, ''), s.study_id),
            referring_physician_name = COALESCE(NULLIF(EXCLUDED.referring_physician_name, ''),
                                                s.referring_physician_name)
        RETURNING study_instance_uid, id, patient_fk
        """,
        params,
    )
    return {str(r[0]): (int(r[1]), int(r[2])) for r in await cur.fetchall()}  # type: ignore[call-overload]


_SERIES_TEXT = (*SERIES_TEXT, *SOURCE_TEXT)


async def _upsert_series(
    conn: Connection,
    updates: list[ValidUpdate],
    study_rows: dict[str, tuple[int, int]],
) -> dict[str, tuple[int, int, str, int, bool]]:
    """Returns series UID -> (series id, study id the series keeps, status, completion
    version, whether this inserted it). Locks the rows. A series takes its study's
    patient, never the update's. The representative header is written here only into a
    new row (store.previews.choose_headers decides for existing ones)."""
    params: list[object] = [
        [u.series_uid for u in updates],
        [study_rows[u.study_uid][0] for u in updates],
        [study_rows[u.study_uid][1] for u in updates],
        [u.series["series_number"] for u in updates],
        [u.series["series_date"] for u in updates],
        [u.series["series_date_raw"] for u in updates],
        [json.dumps(u.fallbacks) for u in updates],
        [u.header_json for u in updates],
        [u.header_sop_uid if u.header_json is not None else "" for u in updates],
    ]
    params += [[u.series[c] for u in updates] for c in _SERIES_TEXT]
    text_cols = ", ".join(_SERIES_TEXT)
    text_types = ", ".join(["%b::text[]"] * len(_SERIES_TEXT))
    text_sets = ",\n".join(f"{c} = COALESCE(NULLIF(EXCLUDED.{c}, ''), s.{c})" for c in _SERIES_TEXT)
    cur = await conn.execute(
        f"""
        INSERT INTO series AS s (series_instance_uid, study_fk, patient_fk, series_number,
                                 series_date, series_date_raw, text_decoding_fallbacks,
                                 representative_header, representative_sop_instance_uid,
                                 {text_cols})
        SELECT uid, study_fk, patient_fk, num, d, d_raw,
               ARRAY(SELECT jsonb_array_elements_text(fallbacks::jsonb)), header::jsonb,
               header_sop, {text_cols}
        FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::int[], %b::date[], %b::text[],
                    %b::text[], %b::text[], %b::text[], {text_types})
            AS t(uid, study_fk, patient_fk, num, d, d_raw, fallbacks, header, header_sop,
                 {text_cols})
        ORDER BY uid
        ON CONFLICT (series_instance_uid) DO UPDATE SET
            series_number = COALESCE(EXCLUDED.series_number, s.series_number),
            series_date = CASE WHEN EXCLUDED.series_date_raw <> ''
                THEN EXCLUDED.series_date ELSE s.series_date END,
            series_date_raw = COALESCE(NULLIF(EXCLUDED.series_date_raw, ''), s.series_date_raw),
            text_decoding_fallbacks = ARRAY(
                SELECT DISTINCT f FROM unnest(s.text_decoding_fallbacks
                                              || EXCLUDED.text_decoding_fallbacks) AS f
                ORDER BY f),
            {text_sets}
        RETURNING series_instance_uid, id, study_fk, status, completion_version,
                  (xmax = 0) AS inserted
        """,
        params,
    )
    return {
        str(r[0]): (int(r[1]), int(r[2]), str(r[3]), int(r[4]), bool(r[5]))  # type: ignore[call-overload]
        for r in await cur.fetchall()
    }


async def _describe_mismatches(
    conn: Connection,
    patient_mismatch: list[ValidUpdate],
    study_mismatch: list[ValidUpdate],
    study_patient: dict[str, int],
    series_rows: dict[str, tuple[int, int, str, int, bool]],
) -> list[_Conflict]:
    patient_fks = [study_patient[u.study_uid] for u in patient_mismatch]
    cur = await conn.execute(
        "SELECT id, patient_id, issuer_of_patient_id FROM patients WHERE id = ANY(%s)",
        [patient_fks],
    )
    patients = {int(r[0]): _patient_label(str(r[1]), str(r[2])) for r in await cur.fetchall()}  # type: ignore[call-overload]
    study_fks = [series_rows[u.series_uid][1] for u in study_mismatch]
    cur = await conn.execute(
        "SELECT id, study_instance_uid FROM studies WHERE id = ANY(%s)", [study_fks]
    )
    studies = {int(r[0]): str(r[1]) for r in await cur.fetchall()}  # type: ignore[call-overload]
    out = [
        _Conflict(
            "study_patient_mismatch",
            u.study_uid,
            patients[study_patient[u.study_uid]],
            _patient_label(*u.patient_key),
            u.update_id,
            str(u.series["receiver_id"]),
        )
        for u in patient_mismatch
    ]
    out += [
        _Conflict(
            "series_study_mismatch",
            u.series_uid,
            studies[series_rows[u.series_uid][1]],
            u.study_uid,
            u.update_id,
            str(u.series["receiver_id"]),
        )
        for u in study_mismatch
    ]
    return out


def _patient_label(patient_id: str, issuer: str) -> str:
    return f"{patient_id}^^{issuer}" if issuer else patient_id


async def _record_conflicts(conn: Connection, conflicts: list[_Conflict]) -> None:
    unique = {(c.kind, c.subject_uid, c.rejected_value): c for c in conflicts}
    rows = [unique[k] for k in sorted(unique)]
    await conn.execute(
        """
        INSERT INTO merge_conflicts AS m (kind, subject_uid, kept_value, rejected_value,
                                          update_id, receiver_id)
        SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                             %b::text[]) AS t(a, b, c, d, e, f)
        ORDER BY a, b, d
        ON CONFLICT (kind, subject_uid, (catalog_key(rejected_value))) DO UPDATE SET
            occurrences = m.occurrences + 1,
            last_seen_at = now(),
            kept_value = EXCLUDED.kept_value,
            update_id = EXCLUDED.update_id,
            receiver_id = EXCLUDED.receiver_id
        """,
        [
            [c.kind for c in rows],
            [c.subject_uid for c in rows],
            [c.kept_value for c in rows],
            [c.rejected_value for c in rows],
            [c.update_id for c in rows],
            [c.receiver_id for c in rows],
        ],
    )
