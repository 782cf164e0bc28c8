"""The query RPCs as SQL: GetSeries, ListSeries, GetStudy, ListStudies, ListPatients.

Lists are newest first on the surrogate id (assigned when the store first stored the row,
never changed), with keyset page tokens (store.tokens): a row's place in the order cannot
move, so pages have no duplicates or gaps while new rows arrive; new rows show up on a
fresh first page. Every filter has an index (see migrations/versions/0001).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.rows import dict_row

from seriesflow.v1 import series_store_pb2 as pb
from store import tokens
from store.database import Connection
from store.errors import BadRequest, NotFound
from store.validation import parse_date

Row = dict[str, Any]

STATUS_TO_PB = {"RECEIVING": pb.SERIES_STATUS_RECEIVING, "COMPLETE": pb.SERIES_STATUS_COMPLETE}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}
REASON_TO_PB = {
    "UNSPECIFIED": pb.COMPLETION_REASON_UNSPECIFIED,
    "IDLE": pb.COMPLETION_REASON_IDLE,
    "RELEASED": pb.COMPLETION_REASON_RELEASED,
    "MAX_AGE": pb.COMPLETION_REASON_MAX_AGE,
}

SERIES_SELECT = """
    SELECT s.id, s.series_instance_uid, st.study_instance_uid, p.patient_id, p.patient_name,
           p.issuer_of_patient_id, s.modality, s.series_number, s.series_description,
           s.num_instances, s.status, s.first_received_at, s.last_received_at, st.study_date,
           st.study_description, st.accession_number, s.body_part_examined, s.manufacturer,
           s.manufacturer_model_name, s.station_name, s.institution_name, s.series_date,
           s.protocol_name, s.source_ae_title, s.receiver_id, s.completion_reason,
           s.completed_at, s.total_size_bytes, s.text_decoding_fallbacks
    FROM series s
    JOIN studies st ON st.id = s.study_fk
    JOIN patients p ON p.id = s.patient_fk
"""

STUDY_SELECT = """
    SELECT st.id, st.study_instance_uid, p.patient_id, p.patient_name, p.issuer_of_patient_id,
           st.study_date, st.study_time, st.study_description, st.accession_number,
           st.study_id, st.referring_physician_name, st.first_received_at,
           st.last_received_at, agg.modalities, agg.num_series, agg.num_instances
    FROM studies st
    JOIN patients p ON p.id = st.patient_fk
    CROSS JOIN LATERAL (
        SELECT COALESCE(array_agg(DISTINCT s.modality ORDER BY s.modality)
                        FILTER (WHERE s.modality <> ''), '{}') AS modalities,
               count(s.id) AS num_series,
               COALESCE(sum(s.num_instances), 0)::bigint AS num_instances
        FROM series s WHERE s.study_fk = st.id
    ) AS agg
"""


def _ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def _date(value: dt.date | None) -> str:
    return value.isoformat() if value is not None else ""


def series_message(r: Row) -> pb.Series:
    return pb.Series(
        series_instance_uid=r["series_instance_uid"],
        study_instance_uid=r["study_instance_uid"],
        patient_id=r["patient_id"],
        patient_name=r["patient_name"],
        issuer_of_patient_id=r["issuer_of_patient_id"],
        modality=r["modality"],
        series_number=r["series_number"],
        series_description=r["series_description"],
        num_instances=r["num_instances"],
        status=STATUS_TO_PB[r["status"]],
        first_received_at=_ts(r["first_received_at"]),
        last_received_at=_ts(r["last_received_at"]),
        study_date=_date(r["study_date"]),
        study_description=r["study_description"],
        accession_number=r["accession_number"],
        body_part_examined=r["body_part_examined"],
        manufacturer=r["manufacturer"],
        manufacturer_model_name=r["manufacturer_model_name"],
        station_name=r["station_name"],
        institution_name=r["institution_name"],
        series_date=_date(r["series_date"]),
        protocol_name=r["protocol_name"],
        source_ae_title=r["source_ae_title"],
        receiver_id=r["receiver_id"],
        completion_reason=REASON_TO_PB[r["completion_reason"]],
        completed_at=_ts(r["completed_at"]),
        total_size_bytes=r["total_size_bytes"],
        text_decoding_fallbacks=r["text_decoding_fallbacks"],
    )


def study_message(r: Row) -> pb.Study:
    return pb.Study(
        study_instance_uid=r["study_instance_uid"],
        patient_id=r["patient_id"],
        patient_name=r["patient_name"],
        issuer_of_patient_id=r["issuer_of_patient_id"],
        study_date=_date(r["study_date"]),
        study_time=r["study_time"],
        study_description=r["study_description"],
        accession_number=r["accession_number"],
        study_id=r["study_id"],
        referring_physician_name=r["referring_physician_name"],
        modalities=r["modalities"],
        num_series=r["num_series"],
        num_instances=r["num_instances"],
        first_received_at=_ts(r["first_received_at"]),
        last_received_at=_ts(r["last_received_at"]),
    )


def _text_filter(value: str, field: str) -> str:
    if "\0" in value:
        raise BadRequest(field, "contains a NUL character")
    return value


def _required(value: str, field: str) -> str:
    if not value.strip():
        raise BadRequest(field, "is required")
    return _text_filter(value, field)


def _date_filter(value: str, field: str) -> dt.date | None:
    if not value:
        return None
    parsed = parse_date(value)
    if parsed is None:
        raise BadRequest(field, f"{value[:40]!r} is not a date; use YYYYMMDD or YYYY-MM-DD")
    return parsed


def _time_filter(request: Message, field: str) -> dt.datetime | None:
    if not request.HasField(field):
        return None
    stamp: Timestamp = getattr(request, field)
    try:
        return stamp.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise BadRequest(field, "is outside the supported time range") from None


async def _fetch(conn: Connection, sql: str, params: dict[str, Any]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


def _page(rows: list[Row], size: int, keyset: list[str], filters: str) -> tuple[list[Row], str]:
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    return rows[:size], tokens.encode([last[k] for k in keyset], filters)


async def list_series(conn: Connection, req: pb.ListSeriesRequest) -> pb.ListSeriesResponse:
    size = tokens.page_size(req.page_size, 100, 1000)
    filters = tokens.fingerprint(req)
    after = tokens.decode(req.page_token, filters, 1)
    where: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": size + 1}
    if req.patient_id:
        where.append("s.patient_fk IN (SELECT id FROM patients WHERE patient_id = %(pid)s)")
        params["pid"] = _text_filter(req.patient_id, "patient_id")
    if req.study_instance_uid:
        where.append("s.study_fk = (SELECT id FROM studies WHERE study_instance_uid = %(study)s)")
        params["study"] = _text_filter(req.study_instance_uid, "study_instance_uid")
    if req.modality:
        where.append("s.modality = %(modality)s")
        params["modality"] = _text_filter(req.modality, "modality")
    if req.status != pb.SERIES_STATUS_UNSPECIFIED:
        if req.status not in STATUS_FROM_PB:
            raise BadRequest("status", f"unknown status {req.status}")
        where.append("s.status = %(status)s")
        params["status"] = STATUS_FROM_PB[req.status]
    date_from = _date_filter(req.study_date_from, "study_date_from")
    date_to = _date_filter(req.study_date_to, "study_date_to")
    if date_from:
        where.append("st.study_date >= %(date_from)s")
        params["date_from"] = date_from
    if date_to:
        where.append("st.study_date <= %(date_to)s")
        params["date_to"] = date_to
    after_t = _time_filter(req, "received_after")
    before_t = _time_filter(req, "received_before")
    if after_t:
        where.append("s.last_received_at >= %(received_after)s")
        params["received_after"] = after_t
    if before_t:
        where.append("s.last_received_at < %(received_before)s")
        params["received_before"] = before_t
    if after is not None:
        where.append("s.id < %(after_id)s")
        params["after_id"] = int(after[0])
    rows = await _fetch(
        conn,
        SERIES_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY s.id DESC LIMIT %(limit)s",
        params,
    )
    page, token = _page(rows, size, ["id"], filters)
    return pb.ListSeriesResponse(series=[series_message(r) for r in page], next_page_token=token)


async def get_series(conn: Connection, req: pb.GetSeriesRequest) -> pb.GetSeriesResponse:
    uid = _required(req.series_instance_uid, "series_instance_uid")
    size = tokens.page_size(req.page_size, 1000, 10000)
    filters = tokens.fingerprint(req)
    after = tokens.decode(req.page_token, filters, 2)
    rows = await _fetch(
        conn, SERIES_SELECT + " WHERE s.series_instance_uid = %(uid)s", {"uid": uid}
    )
    if not rows:
        raise NotFound(f"no series {uid!r} in the catalog")
    series = rows[0]
    params: dict[str, Any] = {"fk": series["id"], "limit": size + 1}
    keyset = ""
    if after is not None:
        keyset = "AND (COALESCE(instance_number, 2147483647), sop_instance_uid) > (%(k)s, %(sop)s)"
        params["k"], params["sop"] = int(after[0]), str(after[1])
    instances = await _fetch(
        conn,
        f"""SELECT sop_instance_uid, sop_class_uid, instance_number, transfer_syntax_uid,
                   size_bytes, received_at, COALESCE(instance_number, 2147483647) AS k
            FROM instances WHERE series_fk = %(fk)s {keyset}
            ORDER BY COALESCE(instance_number, 2147483647), sop_instance_uid
            LIMIT %(limit)s""",
        params,
    )
    page, token = _page(instances, size, ["k", "sop_instance_uid"], filters)
    return pb.GetSeriesResponse(
        series=series_message(series),
        instances=[
            pb.Instance(
                sop_instance_uid=i["sop_instance_uid"],
                sop_class_uid=i["sop_class_uid"],
                instance_number=i["instance_number"],
                transfer_syntax_uid=i["transfer_syntax_uid"],
                size_bytes=i["size_bytes"],
                received_at=_ts(i["received_at"]),
            )
            for i in page
        ],
        next_page_token=token,
    )


async def get_study(conn: Connection, req: pb.GetStudyRequest) -> pb.GetStudyResponse:
    uid = _required(req.study_instance_uid, "study_instance_uid")
    rows = await _fetch(conn, STUDY_SELECT + " WHERE st.study_instance_uid = %(uid)s", {"uid": uid})
    if not rows:
        raise NotFound(f"no study {uid!r} in the catalog")
    series = await _fetch(
        conn,
        SERIES_SELECT
        + """ WHERE s.study_fk = %(fk)s
            ORDER BY s.series_number NULLS LAST, s.series_instance_uid""",
        {"fk": rows[0]["id"]},
    )
    return pb.GetStudyResponse(
        study=study_message(rows[0]), series=[series_message(r) for r in series]
    )


async def list_studies(conn: Connection, req: pb.ListStudiesRequest) -> pb.ListStudiesResponse:
    size = tokens.page_size(req.page_size, 100, 1000)
    filters = tokens.fingerprint(req)
    after = tokens.decode(req.page_token, filters, 1)
    where: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": size + 1}
    if req.patient_id:
        where.append("st.patient_fk IN (SELECT id FROM patients WHERE patient_id = %(pid)s)")
        params["pid"] = _text_filter(req.patient_id, "patient_id")
    if req.accession_number:
        where.append("st.accession_number = %(acc)s")
        params["acc"] = _text_filter(req.accession_number, "accession_number")
    date_from = _date_filter(req.study_date_from, "study_date_from")
    date_to = _date_filter(req.study_date_to, "study_date_to")
    if date_from:
        where.append("st.study_date >= %(date_from)s")
        params["date_from"] = date_from
    if date_to:
        where.append("st.study_date <= %(date_to)s")
        params["date_to"] = date_to
    if after is not None:
        where.append("st.id < %(after_id)s")
        params["after_id"] = int(after[0])
    rows = await _fetch(
        conn,
        STUDY_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY st.id DESC LIMIT %(limit)s",
        params,
    )
    page, token = _page(rows, size, ["id"], filters)
    return pb.ListStudiesResponse(studies=[study_message(r) for r in page], next_page_token=token)


async def list_patients(conn: Connection, req: pb.ListPatientsRequest) -> pb.ListPatientsResponse:
    size = tokens.page_size(req.page_size, 100, 1000)
    filters = tokens.fingerprint(req)
    after = tokens.decode(req.page_token, filters, 1)
    where: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": size + 1}
    if req.patient_id:
        where.append("p.patient_id = %(pid)s")
        params["pid"] = _text_filter(req.patient_id, "patient_id")
    if after is not None:
        where.append("p.id < %(after_id)s")
        params["after_id"] = int(after[0])
    rows = await _fetch(
        conn,
        """SELECT p.id, p.patient_id, p.issuer_of_patient_id, p.patient_name,
                  p.patient_birth_date, p.patient_sex, p.last_received_at,
                  (SELECT count(*) FROM studies st WHERE st.patient_fk = p.id) AS num_studies
           FROM patients p WHERE """
        + " AND ".join(where)
        + " ORDER BY p.id DESC LIMIT %(limit)s",
        params,
    )
    page, token = _page(rows, size, ["id"], filters)
    return pb.ListPatientsResponse(
        patients=[
            pb.Patient(
                patient_id=r["patient_id"],
                issuer_of_patient_id=r["issuer_of_patient_id"],
                patient_name=r["patient_name"],
                patient_birth_date=_date(r["patient_birth_date"]),
                patient_sex=r["patient_sex"],
                num_studies=r["num_studies"],
                last_received_at=_ts(r["last_received_at"]),
            )
            for r in page
        ],
        next_page_token=token,
    )
