"""GetAttributes: answer attributes of a series' representative header (DICOM JSON).

An attribute is asked for by keyword (PatientName) or tag, in any of the forms 00100010,
(0010,0010) and 0010,0010 (hex, any case). Keywords and tags are translated with pydicom's
data dictionary; an unknown keyword or malformed tag is INVALID_ARGUMENT naming it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from seriesflow.store import request_fields
from seriesflow.store.database import Connection
from seriesflow.store.errors import BadRequest, NotFound
from seriesflow.v1 import series_store_pb2 as pb

MAX_ATTRIBUTES = 500

_TAG = re.compile(
    r"([0-9A-Fa-f]{8})"  # 00100010
    r"|\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)"  # (0010,0010)
    r"|([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})"  # 0010,0010
)


def resolve(requested: str, field: str) -> tuple[str, str]:
    """(8-digit upper-case hex tag, keyword) for a keyword or tag as asked."""
    text = requested.strip()
    match = _TAG.fullmatch(text)
    if match:
        hex_tag = (match.group(1) or "".join(g for g in match.groups()[1:] if g)).upper()
        return hex_tag, keyword_for_tag(int(hex_tag, 16)) or ""
    if "\0" not in text and text.isidentifier():
        tag = tag_for_keyword(text)
        if tag is not None:
            return f"{tag:08X}", text
    raise BadRequest(
        field,
        f"{requested[:64]!r} is neither a DICOM keyword (e.g. PatientName) nor a tag "
        "(e.g. 00100010, (0010,0010) or 0010,0010)",
    )


def _display(element: dict[str, Any]) -> str:
    """The value as text: values joined by backslash, person names in Alphabetic form."""
    if "Value" not in element:
        if "InlineBinary" in element or "BulkDataURI" in element:
            return "<binary data>"
        return ""
    values = element["Value"]
    # Any StoreSeries client can store a header: read a scalar where PS3.18 wants a list
    # (and numbers where it wants text) rather than fail the request.
    if not isinstance(values, list):
        values = [values]
    if element.get("vr") == "SQ":
        return f"<sequence of {len(values)} item{'s' if len(values) != 1 else ''}>"
    parts = []
    for value in values:
        if isinstance(value, dict):  # PN: {"Alphabetic": ..., "Ideographic": ..., ...}
            groups = [str(value.get(k) or "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
            parts.append("=".join(groups).rstrip("="))
        elif value is None:
            parts.append("")
        else:
            parts.append(str(value))
    return "\\".join(parts)


def _value_json(element: dict[str, Any]) -> str:
    if "Value" in element:
        return json.dumps(element["Value"], ensure_ascii=False)
    for key in ("InlineBinary", "BulkDataURI"):
        if key in element:
            return json.dumps({key: element[key]})
    return "[]"


def answer(header: dict[str, Any] | None, requested: list[str]) -> list[pb.Attribute]:
    out = []
    for index, asked in enumerate(requested):
        hex_tag, keyword = resolve(asked, f"attributes[{index}]")
        element = (header or {}).get(hex_tag) or (header or {}).get(hex_tag.lower())
        if not isinstance(element, dict):
            out.append(pb.Attribute(requested=asked, tag=hex_tag, keyword=keyword))
            continue
        out.append(
            pb.Attribute(
                requested=asked,
                tag=hex_tag,
                keyword=keyword,
                vr=str(element.get("vr", "")),
                present=True,
                value_json=_value_json(element),
                value=_display(element),
            )
        )
    return out


async def get_attributes(
    conn: Connection, req: pb.GetAttributesRequest
) -> pb.GetAttributesResponse:
    uid = request_fields.uid(req.series_instance_uid, "series_instance_uid", required=True)
    if not req.attributes:
        raise BadRequest("attributes", "name at least one keyword or tag")
    if len(req.attributes) > MAX_ATTRIBUTES:
        raise BadRequest("attributes", f"at most {MAX_ATTRIBUTES} per request")
    # Resolve before touching the database: a typo is INVALID_ARGUMENT either way.
    for index, asked in enumerate(req.attributes):
        resolve(asked, f"attributes[{index}]")
    cur = await conn.execute(
        "SELECT representative_header FROM series WHERE series_instance_uid = %s", [uid]
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no series {uid!r} in the catalog")
    header = row[0] if isinstance(row[0], dict) else None
    return pb.GetAttributesResponse(
        series_instance_uid=uid, attributes=answer(header, list(req.attributes))
    )
