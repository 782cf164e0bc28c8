"""Running compiled queries (store.matching): matches as DICOM JSON, streamed in pages.

`search` is the in-process API (QIDO-RS calls it inside the store); `stream` is the Query
RPC on top of it. Matches come in a stable order (PATIENT, STUDY, SERIES by the row's
surrogate id; IMAGE by series, InstanceNumber, SOPInstanceUID) and are read a page at a
time with keyset paging: each page is one short query in its own transaction that
continues strictly after the last row returned, so a million-instance IMAGE query holds
one page in memory and no connection between pages. Rows committed while a query streams
may or may not appear (each page sees the catalog as of its own start).

Each match is a DICOM JSON dataset (PS3.18 Annex F): {"00100010": {"vr": "PN", "Value":
[{"Alphabetic": "Doe^Jane"}]}, ...}, holding the level's required attributes
(matching.REQUIRED), the match keys and the include fields; an attribute without a value is
{"vr": VR}. With include "all" (STUDY and SERIES levels) it also holds the attributes of
the representative header (the series' middle instance; for a study, its first series'
patient and study attributes); catalog values win over the header's.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import AsyncIterator
from typing import Any, Final

from psycopg.rows import dict_row

from seriesflow.store import matching
from seriesflow.store.database import Connection, Database
from seriesflow.store.errors import BadRequest, DatabaseUnavailable
from seriesflow.store.matching import Attribute, Compiled, Level
from seriesflow.v1 import series_store_pb2 as pb

Row = dict[str, Any]

# Rows per page (one query each). Big enough that round trips do not dominate.
PAGE_ROWS: Final = 500
# Bytes of DICOM JSON per QueryResponse message, under gRPC clients' 4 MiB receive limit.
MESSAGE_BUDGET: Final = 3 * 1024 * 1024

# A study's series aggregates (ModalitiesInStudy and the counts), per study row.
_STUDY_AGG: Final = """CROSS JOIN LATERAL (
            SELECT COALESCE(array_agg(DISTINCT x.modality ORDER BY x.modality)
                            FILTER (WHERE x.modality <> ''), '{}') AS modalities,
                   count(x.id) AS num_series,
                   COALESCE(sum(x.num_instances), 0)::bigint AS num_instances
            FROM series x WHERE x.study_fk = st.id) AS agg"""
_FROM: Final[dict[Level, str]] = {
    Level.PATIENT: "FROM patients p",
    Level.STUDY: f"FROM studies st JOIN patients p ON p.id = st.patient_fk {_STUDY_AGG}",
    Level.SERIES: """FROM series s JOIN studies st ON st.id = s.study_fk
        JOIN patients p ON p.id = s.patient_fk""",
    Level.IMAGE: """FROM instances i JOIN series s ON s.id = i.series_fk
        JOIN studies st ON st.id = s.study_fk JOIN patients p ON p.id = s.patient_fk""",
}
# The order of matches and the keyset that continues it (ascending, immutable columns).
_KEYSET: Final[dict[Level, tuple[str, ...]]] = {
    Level.PATIENT: ("p.id",),
    Level.STUDY: ("st.id",),
    Level.SERIES: ("s.id",),
    Level.IMAGE: ("i.series_fk", "COALESCE(i.instance_number, 2147483647)", "i.sop_instance_uid"),
}
_HEADER: Final[dict[Level, str]] = {
    Level.STUDY: """(SELECT x.representative_header FROM series x
        WHERE x.study_fk = st.id AND x.representative_header IS NOT NULL
        ORDER BY x.id LIMIT 1)""",
    Level.SERIES: "s.representative_header",
}
# Header attributes that describe the representative instance, not its series: left out
# of a series' "all" (the catalog's own instance attributes are IMAGE-level keys).
_INSTANCE_TAGS: Final = frozenset(
    {
        "00080012", "00080013", "00080016", "00080018", "00080022", "00080023", "00080032",
        "00080033", "00200012", "00200013", "00200032", "00201041", "00209057", "00280008",
    }
)  # fmt: skip
# Study-level attributes a study's "all" takes from the header, beside group 0010.
_STUDY_TAGS: Final = frozenset(
    {
        "0020000D", "00080020", "00080030", "00080050", "00080051", "00080090", "00081030",
        "00200010", "00081048", "00081060", "00081080", "00081032", "00321032", "00321060",
        "00080201",
    }
)  # fmt: skip


_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")


def _value(attr: Attribute, value: Any, raw: Any) -> dict[str, Any]:
    """The DICOM JSON element (PS3.18 F.2) of one catalog value."""
    element: dict[str, Any] = {"vr": attr.vr}
    if attr.vr == "DA":
        text = value.strftime("%Y%m%d") if isinstance(value, dt.date) else str(raw or "")
        values: list[Any] = [text] if text else []
    elif attr.vr == "IS":
        values = [int(value)] if value is not None else []
    elif attr.vr == "PN":
        groups = str(value or "").split("=")
        names = {k: g for k, g in zip(_PN_GROUPS, groups, strict=False) if g}
        values = [names] if names else []
    elif isinstance(value, list):
        values = [str(v) for v in value]
    else:
        values = [str(value)] if value not in (None, "") else []
    if values:
        element["Value"] = values
    return element


def _in_all(level: Level, tag: str) -> bool:
    """Whether "all" at `level` takes header attribute `tag`."""
    if level is Level.SERIES:
        return tag not in _INSTANCE_TAGS
    return tag.startswith("0010") or tag in _STUDY_TAGS


def _header_part(level: Level, header: Any, compiled: Compiled) -> dict[str, Any]:
    if not isinstance(header, dict):
        return {}
    out: dict[str, Any] = {}
    if compiled.include_all:
        for tag, element in header.items():
            tag = str(tag).upper()
            if not isinstance(element, dict) or tag.startswith("0002"):
                continue
            if _in_all(level, tag):
                out[tag] = element
    for tag in compiled.header_tags:
        element = header.get(tag) or header.get(tag.lower())
        if isinstance(element, dict):
            out[tag] = element
    return out


def dataset(compiled: Compiled, row: Row) -> dict[str, Any]:
    """The DICOM JSON dataset of one match row."""
    out = _header_part(compiled.level, row.get("header"), compiled)
    for index, attr in enumerate(compiled.returns):
        out[attr.tag] = _value(attr, row[f"c{index}"], row.get(f"r{index}"))
    return dict(sorted(out.items()))


def _select(compiled: Compiled, source: str = "") -> str:
    level = compiled.level
    columns = [f"{expr} AS k{n}" for n, expr in enumerate(_KEYSET[level])]
    for index, attr in enumerate(compiled.returns):
        columns.append(f"{attr.column} AS c{index}")
        if attr.raw:
            columns.append(f"{attr.raw} AS r{index}")
    if level in _HEADER and (compiled.include_all or compiled.header_tags):
        columns.append(f"{_HEADER[level]} AS header")
    return "SELECT " + ", ".join(columns) + " " + (source or _FROM[level])


def _page_sql(compiled: Compiled, after: bool, offset: bool) -> str:
    keyset = _KEYSET[compiled.level]
    where = compiled.where
    if after:
        marks = ", ".join(f"%(after{n})s" for n in range(len(keyset)))
        where = f"({where}) AND ({', '.join(keyset)}) > ({marks})"
    order = ", ".join(keyset)
    tail = " OFFSET %(offset)s" if offset else ""
    if compiled.level is Level.STUDY and "agg." not in where:
        # The page's studies first, their aggregates after: PostgreSQL computes a LATERAL
        # subquery for every row that reaches the sort, so a search matching thousands of
        # studies would aggregate the series of each to return a page of them.
        page = (
            "SELECT st.id FROM studies st JOIN patients p ON p.id = st.patient_fk"
            f" WHERE {where} ORDER BY st.id LIMIT %(rows)s{tail}"
        )
        source = (
            f"FROM ({page}) AS page JOIN studies st ON st.id = page.id"
            f" JOIN patients p ON p.id = st.patient_fk {_STUDY_AGG}"
        )
        return f"{_select(compiled, source)} ORDER BY {order}"
    return f"{_select(compiled)} WHERE {where} ORDER BY {order} LIMIT %(rows)s{tail}"


async def _rows(conn: Connection, *, sql: str, params: dict[str, Any]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        # Never a prepared statement (psycopg prepares one after 5 runs of the same text):
        # how many rows a name prefix or a date range matches decides the plan, and a
        # prepared statement may settle on a plan made without the values (a PatientName
        # prefix search took 30-75 ms so, 3 ms planned with its value, at 10M instances).
        await cur.execute(sql, params, prepare=False)
        return await cur.fetchall()


async def search(
    db: Database,
    compiled: Compiled,
    *,
    limit: int = 0,
    offset: int = 0,
    page_rows: int = PAGE_ROWS,
) -> AsyncIterator[dict[str, Any]]:
    """The matches of `compiled` as DICOM JSON datasets, in order, skipping the first
    `offset`, at most `limit` (0: all). Raises StoreError (DatabaseUnavailable, ...)."""
    if limit < 0 or offset < 0:
        raise BadRequest("limit" if limit < 0 else "offset", "must not be negative")
    if not db.up:
        raise DatabaseUnavailable("PostgreSQL is unavailable (health probe failing)")
    after: list[Any] | None = None
    left = limit or None
    while left is None or left > 0:
        rows_wanted = page_rows if left is None else min(page_rows, left)
        params = dict(compiled.params, rows=rows_wanted)
        if after is not None:
            params.update({f"after{n}": v for n, v in enumerate(after)})
        elif offset:
            params["offset"] = offset
        sql = _page_sql(compiled, after is not None, after is None and offset > 0)
        rows = await db.run(functools.partial(_rows, sql=sql, params=params))
        for row in rows:
            yield dataset(compiled, row)
        if len(rows) < rows_wanted:
            return
        if left is not None:
            left -= len(rows)
        last = rows[-1]
        after = [last[f"k{n}"] for n in range(len(_KEYSET[compiled.level]))]


_LEVELS: Final = {
    pb.QUERY_LEVEL_PATIENT: Level.PATIENT,
    pb.QUERY_LEVEL_STUDY: Level.STUDY,
    pb.QUERY_LEVEL_SERIES: Level.SERIES,
    pb.QUERY_LEVEL_IMAGE: Level.IMAGE,
}


def compile_request(req: pb.QueryRequest) -> Compiled:
    level = _LEVELS.get(req.level)
    if level is None:
        raise BadRequest("level", "name a query level: PATIENT, STUDY, SERIES or IMAGE")
    return matching.compile_query(
        level,
        [(k.key, k.value) for k in req.match],
        list(req.include_fields),
        fuzzy=req.fuzzy_matching,
    )


async def stream(db: Database, req: pb.QueryRequest) -> AsyncIterator[pb.QueryResponse]:
    """The Query RPC: a first message with the unsupported keys (always sent, also when
    nothing matches), then the matches in messages of at most MESSAGE_BUDGET bytes."""
    compiled = compile_request(req)
    matches = search(db, compiled, limit=req.limit, offset=req.offset)
    first = pb.QueryResponse(
        unsupported_keys=[
            pb.UnsupportedKey(key=u.key, reason=u.reason) for u in compiled.unsupported
        ]
    )
    head: pb.QueryResponse | None = first
    batch: list[pb.QueryMatch] = []
    used = 0
    async for match in matches:
        text = json.dumps(match, ensure_ascii=False, separators=(",", ":"))
        size = len(text.encode()) + 8
        if batch and used + size > MESSAGE_BUDGET:
            yield _response(head, batch)
            head, batch, used = None, [], 0
        batch.append(pb.QueryMatch(dataset_json=text))
        used += size
    yield _response(head, batch)


def _response(first: pb.QueryResponse | None, batch: list[pb.QueryMatch]) -> pb.QueryResponse:
    out = pb.QueryResponse() if first is None else first
    out.matches.extend(batch)
    return out
