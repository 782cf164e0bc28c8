"""Validation of SeriesUpdate messages: the gate before anything reaches PostgreSQL.

An update is rejected (ack ok=false, kind INVALID, naming the field) when:
- update_id is empty or blank;
- series.series_instance_uid, study.study_instance_uid or an instance's sop_instance_uid is
  missing or blank, or any UID (also sop_class_uid / transfer_syntax_uid when given) is not
  DICOM UID syntax: digit groups separated by dots, at most 64 characters (leading zeros
  inside a group are accepted: they are common in the wild and harmless as text);
- it carries no instances, or more than the configured maximum;
- any text holds a NUL character (PostgreSQL text cannot store it);
- an instance has a negative size, a size above MAX_INSTANCE_SIZE (1 TiB: larger than any
  DICOM instance, and what keeps a series' total_size_bytes far from bigint overflow), or
  a received_at outside 0001..9999;
- representative_header_json is not a JSON object, or holds text PostgreSQL's jsonb
  refuses (NUL, unpaired surrogates); representative_sop_instance_uid is not a UID;
- an instance's slice_position is given but not finite;
- a preview report (`preview` set) breaks the rules of `_preview` below (like a hold
  report it carries no instances; its PNG is bounded in bytes and pixels, and a preview
  without a PNG says why in a known word);
- the message itself is not valid protobuf / UTF-8 (see `decode_update`).

Everything else is normalised here, once: dates parsed to `datetime.date` (an invalid date
becomes None, and the raw text is kept), duplicate SOPInstanceUIDs inside one update
collapsed, timestamps turned into microseconds since the epoch (UTC). Text has no length
limit: it is stored exactly as received (long text is indexed by its hash, see
migrations/versions/0002). In a representative header, a number JSON cannot carry (the
literals NaN, Infinity and -Infinity that lax JSON writers produce for FD/FL values, or a
number beyond a double's range) is kept as a JSON string of its value ("NaN", "Infinity",
"-Infinity", "1e400"), the representation the receiver itself writes (receiver.record):
PS3.18 F.2 has no JSON number for them, and rejecting the header would dead-letter
instances the receiver already acknowledged.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.message import DecodeError

from seriesflow.store.vocabulary import REASON_FROM_PB
from seriesflow.v1 import series_store_pb2 as pb

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
UID_MAX_LENGTH: Final = 64
MAX_INSTANCE_SIZE: Final = 2**40
# Text attributes copied as they are (NUL checked) into the catalog's columns of the same
# name; store.ingest merges exactly these ("latest non-empty value wins").
STUDY_TEXT: Final = (
    "study_time",
    "study_description",
    "accession_number",
    "study_id",
    "referring_physician_name",
)
SERIES_TEXT: Final = (
    "modality",
    "series_description",
    "body_part_examined",
    "manufacturer",
    "manufacturer_model_name",
    "station_name",
    "institution_name",
    "series_time",
    "protocol_name",
)
# series column -> Source field
SOURCE_TEXT: Final = {
    "source_ae_title": "calling_ae_title",
    "called_ae_title": "called_ae_title",
    "receiver_id": "receiver_id",
}
# Timestamp bounds PostgreSQL and Python both handle: 0001-01-01 .. 9999-12-31.
_MIN_SECONDS: Final = -62135596800
_MAX_SECONDS: Final = 253402300799


class InvalidUpdate(ValueError):
    """The update breaks a rule above; `field` is the offending field path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class UndecodableUpdate:
    """A StoreSeries message that was not valid protobuf (e.g. bad UTF-8 in a string).

    It is answered like any invalid update instead of ending the stream; `update_id` is
    recovered from the raw bytes when possible.
    """

    update_id: str
    message: str


@dataclass
class Instances:
    """An update's instances as columns (the shape the bulk insert binds as arrays)."""

    sop_instance_uid: list[str] = field(default_factory=list)
    sop_class_uid: list[str] = field(default_factory=list)
    instance_number: list[int | None] = field(default_factory=list)
    transfer_syntax_uid: list[str] = field(default_factory=list)
    size_bytes: list[int] = field(default_factory=list)
    received_us: list[int] = field(default_factory=list)  # microseconds since 1970, UTC
    slice_position: list[float | None] = field(default_factory=list)
    # SOPInstanceUIDs the update listed more than once (collapsed here): duplicates too,
    # counted so that the store's "duplicate" metric reconciles with what was received.
    repeated: int = 0

    def __len__(self) -> int:
        return len(self.sop_instance_uid)


@dataclass
class ValidUpdate:
    """A validated, normalised update; text columns map 1:1 onto the schema."""

    update_id: str
    patient: dict[str, object]
    study: dict[str, object]
    series: dict[str, object]
    reason: str
    header_json: str | None
    fallbacks: list[str]
    instances: Instances
    received_at: float  # monotonic time the store read it, for the ack latency metric
    sequence: int = 0  # SeriesUpdate.receiver_sequence
    # The instance header_json was taken from ("" when the receiver did not say).
    header_sop_uid: str = ""

    @property
    def series_uid(self) -> str:
        return str(self.series["series_instance_uid"])

    @property
    def receiver_id(self) -> str:
        return str(self.series["receiver_id"])

    @property
    def study_uid(self) -> str:
        return str(self.study["study_instance_uid"])

    @property
    def patient_key(self) -> tuple[str, str]:
        return str(self.patient["patient_id"]), str(self.patient["issuer_of_patient_id"])


@dataclass(frozen=True)
class ValidHold:
    """A validated hold report (SeriesUpdate.holding): no instances, only who holds what."""

    update_id: str
    series_uid: str
    receiver_id: str
    sequence: int
    received_at: float


@dataclass(frozen=True)
class ValidPreview:
    """A validated preview report (SeriesUpdate.preview): one instance's PNG or why there
    is none. Exactly one of `png` and `failure_reason` is non-empty."""

    update_id: str
    series_uid: str
    receiver_id: str
    sequence: int
    received_at: float
    sop_instance_uid: str
    png: bytes
    width: int
    height: int
    frame: int
    window: str
    window_center: float | None
    window_width: float | None
    failure_reason: str
    failure_detail: str
    rendered_us: int  # microseconds since 1970, UTC


def decode_update(data: bytes) -> pb.SeriesUpdate | UndecodableUpdate:
    """The request deserializer for StoreSeries: never raises, so a bad message cannot
    end the stream."""
    try:
        return pb.SeriesUpdate.FromString(data)
    except DecodeError as exc:
        return UndecodableUpdate(_raw_update_id(data), f"message is not valid: {exc}")


def _raw_update_id(data: bytes) -> str:
    """Field 1 (update_id) read straight from the wire format, best effort."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                if number == 1:
                    return data[pos : pos + length].decode("utf-8", "replace").replace("\0", "")
                pos += length
            else:
                return ""
    except IndexError:
        return ""
    return ""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _text(value: str, name: str) -> str:
    if "\0" in value:
        raise InvalidUpdate(name, "contains a NUL character")
    return value


def _uid(value: str, name: str, *, required: bool) -> str:
    if not value.strip():
        if required:
            raise InvalidUpdate(name, "is required and was empty")
        return ""
    if not is_uid(value):
        shown = value[:80].replace("\0", "\\0")
        raise InvalidUpdate(
            name, f"{shown!r} is not a DICOM UID (digits and dots, at most 64 characters)"
        )
    return value


def is_uid(value: str) -> bool:
    """DICOM UID syntax: digit groups separated by dots, at most 64 characters."""
    return len(value) <= UID_MAX_LENGTH and _UID.fullmatch(value) is not None


def parse_date(raw: str) -> dt.date | None:
    """YYYYMMDD (DICOM DA) or YYYY-MM-DD as a date; None when empty or not a real date."""
    text = raw.strip()
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        text = text[:4] + text[5:7] + text[8:]
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


_HEADER = "representative_header_json"
# A preview is one small PNG (the receiver renders at most its preview size, 512 px by
# default): 2 MiB is far above that and keeps one report far below gRPC's message limit.
MAX_PREVIEW_BYTES: Final = 2 * 1024 * 1024
MAX_PREVIEW_SIDE: Final = 4096
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# Why a receiver has no preview (SeriesPreview.failure_reason); "pending" is the store's own
# answer for a series without one and never comes from a receiver.
PREVIEW_FAILURES: Final = frozenset(
    {"no_pixel_data", "undecodable", "unsupported", "too_large", "failed"}
)


def _header(value: str) -> str | None:
    if not value:
        return None
    try:
        return _canonical_header(value, _HEADER)
    except RecursionError:
        # json and the NUL scan recurse per level; real DICOM nests a few sequences deep
        raise InvalidUpdate(_HEADER, "is nested too deeply to be a DICOM JSON dataset") from None


def _canonical_header(value: str, name: str) -> str:
    try:
        parsed = json.loads(value, parse_constant=str, parse_float=_json_float, parse_int=_json_int)
    except ValueError as exc:
        raise InvalidUpdate(name, f"is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidUpdate(name, "must be a JSON object (a DICOM JSON dataset)")
    if _holds_nul(parsed):
        raise InvalidUpdate(name, "contains a NUL character (\\u0000), which jsonb refuses")
    # Every float left is finite (see _json_float; NaN/Infinity became strings): allow_nan
    # stays off so that no non-JSON literal can ever reach jsonb.
    canonical = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        canonical.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUpdate(name, "contains an unpaired surrogate (invalid text)") from None
    return canonical


def _json_float(text: str) -> float | str:
    """A JSON number with a fraction or exponent; as its text when a double cannot hold
    it (1e400 would become Infinity, which JSON and jsonb cannot carry)."""
    number = float(text)
    return number if math.isfinite(number) else text


def _json_int(text: str) -> int | str:
    """A JSON integer; as its text when Python refuses to convert it (over 4300 digits)."""
    try:
        return int(text)
    except ValueError:
        return text


def _holds_nul(value: object) -> bool:
    # A loop, not recursion: a header the receiver could render (sequences nested ~150
    # deep) must not fail here on Python's recursion limit.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\0" in item:
                return True
        elif isinstance(item, dict):
            if any("\0" in k for k in item):
                return True
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def validate(
    update: pb.SeriesUpdate, *, received_at: float, max_instances: int
) -> ValidUpdate | ValidHold | ValidPreview:
    """The normalised update, hold report or preview report, or InvalidUpdate naming the
    first offending field."""
    if not update.update_id.strip():
        raise InvalidUpdate("update_id", "is required and was empty")
    update_id = _text(update.update_id, "update_id")
    if update.receiver_sequence < 0:
        raise InvalidUpdate("receiver_sequence", f"{update.receiver_sequence} is negative")
    has_preview = update.HasField("preview")
    if update.holding and has_preview:
        raise InvalidUpdate(
            "preview", "a report is a hold report or a preview report, not both: send them apart"
        )
    if update.holding:
        return _hold(update, update_id, received_at)
    if has_preview:
        return _preview(update, update_id, received_at)
    p, st, se, src = update.patient, update.study, update.series, update.source
    series_uid = _uid(se.series_instance_uid, "series.series_instance_uid", required=True)
    study_uid = _uid(st.study_instance_uid, "study.study_instance_uid", required=True)
    if not update.instances:
        raise InvalidUpdate("instances", "at least one instance is required")
    if len(update.instances) > max_instances:
        raise InvalidUpdate(
            "instances", f"{len(update.instances)} instances; at most {max_instances} per update"
        )
    patient: dict[str, object] = {
        name: _text(getattr(p, name), f"patient.{name}")
        for name in ("patient_id", "issuer_of_patient_id", "patient_name", "patient_sex")
    }
    patient["patient_birth_date_raw"] = _text(p.patient_birth_date, "patient.patient_birth_date")
    patient["patient_birth_date"] = parse_date(p.patient_birth_date)
    study: dict[str, object] = {
        name: _text(getattr(st, name), f"study.{name}") for name in STUDY_TEXT
    }
    study["study_instance_uid"] = study_uid
    study["study_date_raw"] = _text(st.study_date, "study.study_date")
    study["study_date"] = parse_date(st.study_date)
    series: dict[str, object] = {
        name: _text(getattr(se, name), f"series.{name}") for name in SERIES_TEXT
    }
    series["series_instance_uid"] = series_uid
    series["series_number"] = se.series_number if se.HasField("series_number") else None
    series["series_date_raw"] = _text(se.series_date, "series.series_date")
    series["series_date"] = parse_date(se.series_date)
    for column, name in SOURCE_TEXT.items():
        series[column] = _text(getattr(src, name), f"source.{name}")
    fallbacks = sorted(
        {_text(f, "text_decoding_fallbacks") for f in update.text_decoding_fallbacks if f}
    )
    reason = REASON_FROM_PB.get(update.completion_reason)
    if reason is None:
        raise InvalidUpdate("completion_reason", f"unknown value {update.completion_reason}")
    return ValidUpdate(
        update_id=update_id,
        patient=patient,
        study=study,
        series=series,
        reason=reason,
        header_json=_header(update.representative_header_json),
        header_sop_uid=_uid(
            update.representative_sop_instance_uid,
            "representative_sop_instance_uid",
            required=False,
        ),
        fallbacks=fallbacks,
        instances=_instances(update, now_us=time.time_ns() // 1000),
        received_at=received_at,
        sequence=update.receiver_sequence,
    )


def _hold(update: pb.SeriesUpdate, update_id: str, received_at: float) -> ValidHold:
    if update.instances:
        raise InvalidUpdate(
            "instances", "a hold report (holding=true) carries no instances; send them apart"
        )
    series_uid = _uid(
        update.series.series_instance_uid, "series.series_instance_uid", required=True
    )
    return ValidHold(
        update_id=update_id,
        series_uid=series_uid,
        receiver_id=_text(update.source.receiver_id, "source.receiver_id"),
        sequence=update.receiver_sequence,
        received_at=received_at,
    )


def _preview(update: pb.SeriesUpdate, update_id: str, received_at: float) -> ValidPreview:
    if update.instances:
        raise InvalidUpdate(
            "instances", "a preview report (preview set) carries no instances; send them apart"
        )
    series_uid = _uid(
        update.series.series_instance_uid, "series.series_instance_uid", required=True
    )
    p = update.preview
    if p.series_instance_uid and p.series_instance_uid != series_uid:
        raise InvalidUpdate(
            "preview.series_instance_uid",
            "names another series than series.series_instance_uid; leave it empty or equal",
        )
    sop = _uid(p.sop_instance_uid, "preview.sop_instance_uid", required=True)
    png = bytes(p.png)
    if png:
        if len(png) > MAX_PREVIEW_BYTES:
            raise InvalidUpdate(
                "preview.png", f"{len(png)} bytes; at most {MAX_PREVIEW_BYTES} (2 MiB)"
            )
        if not png.startswith(PNG_SIGNATURE):
            raise InvalidUpdate("preview.png", "is not a PNG (no PNG signature)")
        for name in ("width", "height"):
            side = getattr(p, name)
            if not 1 <= side <= MAX_PREVIEW_SIDE:
                raise InvalidUpdate(
                    f"preview.{name}", f"{side} is outside 1..{MAX_PREVIEW_SIDE} pixels"
                )
        if p.failure_reason:
            raise InvalidUpdate(
                "preview.failure_reason", "must be empty when png is set (a preview or why not)"
            )
    elif p.failure_reason not in PREVIEW_FAILURES:
        known = ", ".join(sorted(PREVIEW_FAILURES))
        shown = p.failure_reason[:80].replace("\0", "\\0")
        raise InvalidUpdate(
            "preview.failure_reason",
            f"{shown!r} is not one of {known} (required when png is empty)",
        )
    if p.frame < 0:
        raise InvalidUpdate("preview.frame", f"{p.frame} is negative")
    window_center = _finite(p, "window_center")
    window_width = _finite(p, "window_width")
    stamp = p.rendered_at
    if p.HasField("rendered_at"):
        if not (_MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS and 0 <= stamp.nanos < 10**9):
            raise InvalidUpdate("preview.rendered_at", "is outside years 0001..9999")
        rendered_us = stamp.seconds * 1_000_000 + stamp.nanos // 1000
    else:
        rendered_us = time.time_ns() // 1000
    return ValidPreview(
        update_id=update_id,
        series_uid=series_uid,
        receiver_id=_text(update.source.receiver_id, "source.receiver_id"),
        sequence=update.receiver_sequence,
        received_at=received_at,
        sop_instance_uid=sop,
        png=png,
        width=p.width if png else 0,
        height=p.height if png else 0,
        frame=p.frame,
        window=_text(p.window, "preview.window"),
        window_center=window_center,
        window_width=window_width,
        failure_reason="" if png else p.failure_reason,
        failure_detail="" if png else _text(p.failure_detail, "preview.failure_detail"),
        rendered_us=rendered_us,
    )


def _finite(preview: pb.SeriesPreview, name: str) -> float | None:
    if not preview.HasField(name):
        return None
    value = float(getattr(preview, name))
    if not math.isfinite(value):
        raise InvalidUpdate(f"preview.{name}", f"{value} is not a finite number")
    return value


def _instances(update: pb.SeriesUpdate, *, now_us: int) -> Instances:
    # The hot loop of ingestion (one pass per instance): keep it to plain attribute reads
    # and one regex; sop class / transfer syntax UIDs repeat, so each is checked once.
    out = Instances()
    seen: set[str] = set()
    checked: set[str] = set()
    uid_match = _UID.fullmatch
    for index, inst in enumerate(update.instances):
        sop = inst.sop_instance_uid
        if len(sop) > UID_MAX_LENGTH or not uid_match(sop):
            _uid(sop, f"instances[{index}].sop_instance_uid", required=True)
        if sop in seen:
            out.repeated += 1
            continue
        seen.add(sop)
        sop_class, syntax = inst.sop_class_uid, inst.transfer_syntax_uid
        if sop_class not in checked:
            checked.add(_uid(sop_class, f"instances[{index}].sop_class_uid", required=False))
        if syntax not in checked:
            checked.add(_uid(syntax, f"instances[{index}].transfer_syntax_uid", required=False))
        size = inst.size_bytes
        if not 0 <= size <= MAX_INSTANCE_SIZE:
            raise InvalidUpdate(
                f"instances[{index}].size_bytes",
                f"{size} is outside 0..{MAX_INSTANCE_SIZE} (1 TiB, more than any DICOM instance)",
            )
        # An unset Timestamp reads as 0/0 (1970-01-01T00:00:00Z exactly, never a real
        # receive time), which saves a HasField call per instance.
        stamp = inst.received_at
        seconds, nanos = stamp.seconds, stamp.nanos
        if seconds or nanos:
            if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
                raise InvalidUpdate(
                    f"instances[{index}].received_at", "is outside years 0001..9999"
                )
            # Integers, not datetimes: building 100k datetime objects costs more than the
            # whole COPY (store.instances writes PostgreSQL's binary format directly).
            received = seconds * 1_000_000 + nanos // 1000
        else:
            # Not given: the time the store received it is the best estimate.
            received = now_us
        out.sop_instance_uid.append(sop)
        out.sop_class_uid.append(sop_class)
        out.instance_number.append(
            inst.instance_number if inst.HasField("instance_number") else None
        )
        out.transfer_syntax_uid.append(syntax)
        out.size_bytes.append(size)
        out.received_us.append(received)
        if inst.HasField("slice_position"):
            position = inst.slice_position
            if not math.isfinite(position):
                raise InvalidUpdate(
                    f"instances[{index}].slice_position", f"{position} is not a finite number"
                )
            out.slice_position.append(position)
        else:
            out.slice_position.append(None)
    return out
