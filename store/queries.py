"""The query RPCs as SQL: GetSeries, ListSeries, GetStudy, ListStudies, ListPatients.

Lists are newest first on the surrogate id (assigned when the store first stored the row,
never changed), with keyset page tokens (store.tokens): a row's place in the order cannot
move, so pages have no duplicates or gaps while new rows arrive; new rows show up on a
fresh first page. Text filters are DICOM attribute matching (store.matching, the engine
behind Query, QIDO-RS and C-FIND): an exact value uses its column's index (free text
through catalog_key, its SHA-256, then exactly; see migrations/versions/0002); wildcards
and person names (matched case-insensitively) cannot use a btree and scan.

Pages are also bounded in bytes. Stored text is never cut, so a few rows can hold
megabytes (a 1 MiB PatientName in every series); gRPC clients refuse a response above
their receive limit (grpcurl's and gRPC's default is 4 MiB). A list page therefore ends
early, with a next_page_token for the rest, once its encoded rows would pass
RESPONSE_BUDGET (3 MiB); the same holds for GetSeries' instances. A page always has at
least one row: a single row larger than the budget comes back alone, and then only the
client's limit can be raised (grpcurl -max-msg-sz).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Final, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.rows import dict_row

from seriesflow.store import matching, request_fields, tokens
from seriesflow.store.database import Connection
from seriesflow.store.errors import BadRequest, NotFound
from seriesflow.store.vocabulary import REASON_TO_PB, STATUS_FROM_PB, STATUS_TO_PB
from seriesflow.v1 import series_store_pb2 as pb

Row = dict[str, Any]
M = TypeVar("M", bound=Message)

# Encoded bytes of the rows of one page (see the module docstring); 1 MiB under the 4 MiB
# default receive limit of gRPC clients leaves room for the rest of the response.
RESPONSE_BUDGET: Final = 3 * 1024 * 1024
# A repeated message field costs its tag and length prefix besides the message itself.
_FIELD_OVERHEAD: Final = 6
# Rows fetched in the first round trip from a page's server-side cursor (see _page).
_FIRST_CHUNK: Final = 8

SERIES_SELECT = """
    SELECT s.id, s.series_instance_uid, st.study_instance_uid, p.patient_id, p.patient_name,
           p.issuer_of_patient_id, s.modality, s.series_number, s.series_description,
           s.num_instances, s.status, s.first_received_at, s.last_received_at, st.study_date,
           st.study_description, st.accession_number, s.body_part_examined, s.manufacturer,
           s.manufacturer_model_name, s.station_name, s.institution_name, s.series_date,
           s.protocol_name, s.source_ae_title, s.receiver_id, s.completion_reason,
           s.completed_at, s.total_size_bytes, s.text_decoding_fallbacks,
           s.completion_version, s.completion_detail, s.representative_sop_instance_uid
    FROM series s
    JOIN studies st ON st.id = s.study_fk
    JOIN patients p ON p.id = s.patient_fk
"""

_STUDY_COLUMNS = """
    SELECT st.id, st.study_instance_uid, p.patient_id, p.patient_name, p.issuer_of_patient_id,
           st.study_date, st.study_time, st.study_description, st.accession_number,
           st.study_id, st.referring_physician_name, st.first_received_at,
           st.last_received_at, agg.modalities, agg.num_series, agg.num_instances
"""
_STUDY_AGG = """
    CROSS JOIN LATERAL (
        SELECT COALESCE(array_agg(DISTINCT s.modality ORDER BY s.modality)
                        FILTER (WHERE s.modality <> ''), '{}') AS modalities,
               count(s.id) AS num_series,
               COALESCE(sum(s.num_instances), 0)::bigint AS num_instances
        FROM series s WHERE s.study_fk = st.id
    ) AS agg
"""
_STUDY_JOIN = "FROM studies st JOIN patients p ON p.id = st.patient_fk"
STUDY_SELECT = f"{_STUDY_COLUMNS} {_STUDY_JOIN} {_STUDY_AGG}"


PATIENT_SELECT = """
    SELECT p.id, p.patient_id, p.issuer_of_patient_id, p.patient_name, p.patient_birth_date,
           p.patient_sex, p.last_received_at,
           (SELECT count(*) FROM studies st WHERE st.patient_fk = p.id) AS num_studies
    FROM patients p
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
        completion_version=r["completion_version"],
        completion_detail=r["completion_detail"],
        representative_sop_instance_uid=r["representative_sop_instance_uid"],
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


async def _fetch(conn: Connection, sql: str, params: dict[str, Any]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def _page(
    conn: Connection,
    sql: str,
    params: dict[str, Any],
    keyset: list[str],
    filters: str,
    message: Callable[[Row], M],
    budget: int = RESPONSE_BUDGET,
) -> tuple[list[M], str]:
    """The rows of `sql` (LIMIT page size + 1) as messages: up to the page size, fewer when
    their encoded size would pass `budget` (never none), and the token that continues
    after the last one returned ("" when nothing is left).

    Rows are read through a server-side cursor, in chunks sized from the rows seen so far
    to what the budget has room for, and reading stops at the budget: a page of
    megabyte rows never holds much more than the budget in the store's memory."""
    size = int(params["limit"]) - 1
    out: list[M] = []
    used = 0
    last: Row | None = None
    more = False
    # A cursor's plan is by default made for fetching its first 10% of rows fast
    # (cursor_tuple_fraction 0.1), which prefers walking an index in the page's order and
    # filtering to sorting the few rows an index finds: a page that does not fill (MG
    # series in a month of study dates, 10M-instance catalog) then reads every series of
    # the modality, ~100 ms instead of ~2. Every row of the page is wanted (LIMIT bounds
    # it), so plan for all of them, as a plain SELECT would be.
    await conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
    async with conn.cursor(name="page", row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        chunk = _FIRST_CHUNK
        while not more and (rows := await cur.fetchmany(chunk)):
            for row in rows:
                if len(out) == size:
                    more = True
                    break
                item = message(row)
                used += item.ByteSize() + _FIELD_OVERHEAD
                if out and used > budget:
                    more = True
                    break
                out.append(item)
                last = row
            # Next, about as many rows as the budget has room for at the size seen so far:
            # one round trip for small rows, a few rows at a time for huge ones.
            room = max(budget - used, 0) * len(out) // max(used, 1)
            chunk = min(max(room, 1), size + 1 - len(out))
    if not more or last is None:
        return out, ""
    return out, tokens.encode([last[k] for k in keyset], filters)


class _Where:
    """The WHERE clause of a list query, built filter by filter with its parameters."""

    def __init__(self, page_size: int) -> None:
        self.clauses = ["TRUE"]
        self.params: dict[str, Any] = {"limit": page_size + 1}
        self._matching = matching.Params(self.params)

    def matches(self, keyword: str, value: str, field: str, within: str = "{}") -> None:
        """A filter in DICOM matching syntax (wildcards, backslash alternatives, person
        names case-insensitive) on attribute `keyword`, compiled by the matching engine
        that Query, QIDO-RS and C-FIND use, so the doors cannot disagree. `within` wraps
        the condition (e.g. in an EXISTS over a study's series)."""
        sql = matching.compile_filter(keyword, value, field, self._matching)
        if sql:
            self.clauses.append(within.format(f"({sql})"))

    def add(self, clause: str, name: str, value: object) -> None:
        """`clause` (with %(name)s) when value is given: "", None and 0 mean no filter."""
        if value:
            self.clauses.append(clause)
            self.params[name] = value

    def study_dates(self, first: str, last: str) -> None:
        dates = request_fields.date_range(first, last, ("study_date_from", "study_date_to"))
        self.add("st.study_date >= %(date_from)s", "date_from", dates[0])
        self.add("st.study_date <= %(date_to)s", "date_to", dates[1])

    def before_id(self, column: str, after: list[Any] | None) -> None:
        """Keyset paging on the surrogate id, newest first."""
        if after is not None:
            self.add(f"{column} < %(after_id)s", "after_id", int(after[0]))

    def sql(self, select: str, order_column: str) -> str:
        where = " AND ".join(self.clauses)
        return f"{select} WHERE {where} ORDER BY {order_column} DESC LIMIT %(limit)s"


_ListRequest = pb.ListSeriesRequest | pb.ListStudiesRequest | pb.ListPatientsRequest


async def _listed(
    conn: Connection,
    req: _ListRequest,
    where: _Where,
    select: str,
    order_column: str,
    message: Callable[[Row], M],
) -> tuple[list[M], str]:
    """One page of a list query, newest first, and the token for the next."""
    filters = tokens.fingerprint(req)
    where.before_id(order_column, tokens.decode(req.page_token, filters, (int,)))
    return await _page(
        conn, where.sql(select, order_column), where.params, ["id"], filters, message
    )


def _page_size(requested: int, default: int, maximum: int) -> int:
    """AIP-158: a page size above the maximum means the maximum; negative is an error."""
    return tokens.page_size(min(requested, maximum), default, maximum)


# ListSeries' text filters: request field -> attribute keyword (store.matching).
_SERIES_FILTERS: Final = {
    "patient_id": "PatientID",
    "study_instance_uid": "StudyInstanceUID",
    "modality": "Modality",
    "patient_name": "PatientName",
    "accession_number": "AccessionNumber",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
    "referring_physician_name": "ReferringPhysicianName",
    "body_part_examined": "BodyPartExamined",
}
# ListStudies': study and patient attributes, then attributes of any of a study's series.
_STUDY_FILTERS: Final = {
    "patient_id": "PatientID",
    "accession_number": "AccessionNumber",
    "patient_name": "PatientName",
    "study_description": "StudyDescription",
    "referring_physician_name": "ReferringPhysicianName",
}
_STUDY_SERIES_FILTERS: Final = {
    "series_description": "SeriesDescription",
    "body_part_examined": "BodyPartExamined",
}
_ANY_SERIES: Final = "EXISTS (SELECT 1 FROM series s WHERE s.study_fk = st.id AND {})"


async def list_series(conn: Connection, req: pb.ListSeriesRequest) -> pb.ListSeriesResponse:
    where = _Where(_page_size(req.page_size, 100, 1000))
    for field, keyword in _SERIES_FILTERS.items():
        where.matches(keyword, getattr(req, field), field)
    if req.status != pb.SERIES_STATUS_UNSPECIFIED and req.status not in STATUS_FROM_PB:
        raise BadRequest("status", f"unknown status {req.status}")
    where.add("s.status = %(status)s", "status", STATUS_FROM_PB.get(req.status))
    where.study_dates(req.study_date_from, req.study_date_to)
    received = request_fields.time_range(req, ("received_after", "received_before"))
    where.add("s.last_received_at >= %(received_after)s", "received_after", received[0])
    where.add("s.last_received_at < %(received_before)s", "received_before", received[1])
    page, token = await _listed(conn, req, where, SERIES_SELECT, "s.id", series_message)
    return pb.ListSeriesResponse(series=page, next_page_token=token)


async def get_series(conn: Connection, req: pb.GetSeriesRequest) -> pb.GetSeriesResponse:
    uid = request_fields.uid(req.series_instance_uid, "series_instance_uid", required=True)
    size = tokens.page_size(req.page_size, 1000, 10000)
    filters = tokens.fingerprint(req)
    after = tokens.decode(req.page_token, filters, (int, str))
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
    head = series_message(series)
    page, token = await _page(
        conn,
        f"""SELECT sop_instance_uid, sop_class_uid, instance_number, transfer_syntax_uid,
                   size_bytes, received_at, slice_position,
                   COALESCE(instance_number, 2147483647) AS k
            FROM instances WHERE series_fk = %(fk)s {keyset}
            ORDER BY COALESCE(instance_number, 2147483647), sop_instance_uid
            LIMIT %(limit)s""",
        params,
        ["k", "sop_instance_uid"],
        filters,
        _instance_message,
        budget=RESPONSE_BUDGET - head.ByteSize(),
    )
    return pb.GetSeriesResponse(series=head, instances=page, next_page_token=token)


def _instance_message(i: Row) -> pb.Instance:
    return pb.Instance(
        sop_instance_uid=i["sop_instance_uid"],
        sop_class_uid=i["sop_class_uid"],
        instance_number=i["instance_number"],
        transfer_syntax_uid=i["transfer_syntax_uid"],
        size_bytes=i["size_bytes"],
        received_at=_ts(i["received_at"]),
        slice_position=i["slice_position"],
    )


async def get_study(conn: Connection, req: pb.GetStudyRequest) -> pb.GetStudyResponse:
    uid = request_fields.uid(req.study_instance_uid, "study_instance_uid", required=True)
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
    where = _Where(_page_size(req.page_size, 100, 1000))
    for field, keyword in _STUDY_FILTERS.items():
        where.matches(keyword, getattr(req, field), field)
    for field, keyword in _STUDY_SERIES_FILTERS.items():
        where.matches(keyword, getattr(req, field), field, _ANY_SERIES)
    where.study_dates(req.study_date_from, req.study_date_to)
    filters = tokens.fingerprint(req)
    where.before_id("st.id", tokens.decode(req.page_token, filters, (int,)))
    # The page's studies first, their series aggregates after: PostgreSQL computes a
    # LATERAL subquery for every row that reaches the sort, so a filter matching thousands
    # of studies would aggregate the series of each to return a page of them.
    ids = where.sql(f"SELECT st.id {_STUDY_JOIN}", "st.id")
    sql = (
        f"{_STUDY_COLUMNS} FROM ({ids}) AS page JOIN studies st ON st.id = page.id"
        f" JOIN patients p ON p.id = st.patient_fk {_STUDY_AGG} ORDER BY st.id DESC"
    )
    page, token = await _page(conn, sql, where.params, ["id"], filters, study_message)
    return pb.ListStudiesResponse(studies=page, next_page_token=token)


async def list_patients(conn: Connection, req: pb.ListPatientsRequest) -> pb.ListPatientsResponse:
    where = _Where(_page_size(req.page_size, 100, 1000))
    where.matches("PatientID", req.patient_id, "patient_id")
    page, token = await _listed(conn, req, where, PATIENT_SELECT, "p.id", patient_message)
    return pb.ListPatientsResponse(patients=page, next_page_token=token)


def patient_message(r: Row) -> pb.Patient:
    return pb.Patient(
        patient_id=r["patient_id"],
        issuer_of_patient_id=r["issuer_of_patient_id"],
        patient_name=r["patient_name"],
        patient_birth_date=_date(r["patient_birth_date"]),
        patient_sex=r["patient_sex"],
        num_studies=r["num_studies"],
        last_received_at=_ts(r["last_received_at"]),
    )
