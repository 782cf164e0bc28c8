"""One parsed instance as the record the spool keeps: a one-instance SeriesUpdate.

Everything the store needs of an instance is read from its header here, once, before the
C-STORE is answered: patient, study and series attributes, the instance itself, where it
came from and, when asked, the series' representative header as DICOM JSON (PS3.18 F,
bulk data left out). Text that only decoded best-effort is named in
text_decoding_fallbacks (contract 4). receiver.updates later merges a series' records.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from seriesflow.receiver import header
from seriesflow.receiver.header import ParsedHeader
from seriesflow.v1 import series_store_pb2 as pb

_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
# JSON nesting of a representative header, at most: the dataset, then three per sequence
# level (the element, its Value array, the item), then an element and its Value array:
# 64 levels of sequences, far beyond real DICOM (structured reports nest about ten deep).
MAX_HEADER_DEPTH = 1 + 3 * 64 + 2
# A record, at most. receiver.updates merges one record's attributes with one record's
# header and up to 1,000 small instance entries, so an update stays under the 64 MiB gRPC
# message limit of receiver.client and the store: a bigger one would break the stream on
# every re-send. A header that makes a record larger is left out; a record larger without
# it (text of implicit VR, 4-byte lengths) is refused at C-STORE (receiver.intake).
MAX_RECORD_BYTES = 24 * 1024 * 1024


def build(
    parsed: ParsedHeader,
    *,
    received_at: float,
    negotiated_sop_class_uid: str,
    calling_ae_title: str,
    called_ae_title: str,
    receiver_id: str,
    representative: bool,
) -> pb.SeriesUpdate:
    """The instance as a one-instance SeriesUpdate; `received_at` is time.time() seconds.

    With `representative`, the record also carries the whole header as DICOM JSON, unless
    it cannot be rendered: then the record goes without it (`representative_header_json`
    stays empty) and the instance is still stored; another instance of the series will be
    the representative. Raises HeaderError("unparseable") for a value pydicom cannot read.
    """
    # Values are converted on first read, so hostile bytes may fail only here.
    with header.unparseable_on_failure():
        header.charset_fallback(parsed)
        record = pb.SeriesUpdate(
            patient=pb.PatientAttributes(
                patient_id=header.text(parsed, "PatientID"),
                issuer_of_patient_id=header.text(parsed, "IssuerOfPatientID"),
                patient_name=header.text(parsed, "PatientName"),
                patient_birth_date=header.text(parsed, "PatientBirthDate"),
                patient_sex=header.text(parsed, "PatientSex"),
            ),
            study=pb.StudyAttributes(
                study_instance_uid=parsed.study_uid,
                study_date=header.text(parsed, "StudyDate"),
                study_time=header.text(parsed, "StudyTime"),
                study_description=header.text(parsed, "StudyDescription"),
                accession_number=header.text(parsed, "AccessionNumber"),
                study_id=header.text(parsed, "StudyID"),
                referring_physician_name=header.text(parsed, "ReferringPhysicianName"),
            ),
            series=pb.SeriesAttributes(
                series_instance_uid=parsed.series_uid,
                modality=header.text(parsed, "Modality"),
                series_number=header.integer(parsed, "SeriesNumber"),
                series_description=header.text(parsed, "SeriesDescription"),
                body_part_examined=header.text(parsed, "BodyPartExamined"),
                manufacturer=header.text(parsed, "Manufacturer"),
                manufacturer_model_name=header.text(parsed, "ManufacturerModelName"),
                station_name=header.text(parsed, "StationName"),
                institution_name=header.text(parsed, "InstitutionName"),
                series_date=header.text(parsed, "SeriesDate"),
                series_time=header.text(parsed, "SeriesTime"),
                protocol_name=header.text(parsed, "ProtocolName"),
            ),
            instances=[
                pb.Instance(
                    sop_instance_uid=parsed.sop_instance_uid,
                    sop_class_uid=header.sop_class_uid(parsed, negotiated_sop_class_uid),
                    instance_number=header.integer(parsed, "InstanceNumber"),
                    transfer_syntax_uid=parsed.transfer_syntax_uid,
                    size_bytes=parsed.size_bytes,
                    received_at=_timestamp(received_at),
                    slice_position=header.slice_position(parsed),
                )
            ],
            source=pb.Source(
                calling_ae_title=_ae_title(calling_ae_title),
                called_ae_title=_ae_title(called_ae_title),
                receiver_id=receiver_id,
            ),
        )
    if representative:
        # An element that will not render as JSON costs the header, not the instance.
        with contextlib.suppress(Exception):
            record.representative_header_json = _representative_json(parsed)
        if record.ByteSize() > MAX_RECORD_BYTES:
            record.representative_header_json = ""
    record.text_decoding_fallbacks.extend(sorted(parsed.fallbacks))
    return record


def representative_header(parsed: ParsedHeader) -> str:
    """The header as DICOM JSON for SeriesUpdate.representative_header_json, or "" when it
    cannot be rendered or would be too large to send (the series keeps another one)."""
    try:
        rendered = _representative_json(parsed)
    except Exception:  # pydicom raises many types on hostile values
        return ""
    return rendered if len(rendered.encode()) <= MAX_RECORD_BYTES // 2 else ""


def _representative_json(parsed: ParsedHeader) -> str:
    """The header as DICOM JSON without bulk data, NUL characters removed.

    NaN, +Infinity and -Infinity are legal values of FD and FL (binary IEEE floats), but
    JSON has no number for them and PS3.18 F.2 says nothing about them; such a value is
    written as a JSON string, "NaN", "Infinity" or "-Infinity" (what Python and JavaScript
    call them), so the header is still valid JSON, the value is not lost, and the store
    keeps it as it is (it canonicalises bare NaN/Infinity literals the same way).
    Finite values stay JSON numbers.

    Adds to `parsed.fallbacks` every text attribute it meets that did not decode cleanly,
    and only once the whole header rendered."""

    def drop_bulk(element: DataElement) -> str:
        return ""  # replaced by a BulkDataURI key that `_clean` then removes

    as_dict = parsed.dataset.to_json_dict(
        bulk_data_threshold=1024, bulk_data_element_handler=drop_bulk
    )
    if _depth(as_dict) > MAX_HEADER_DEPTH:
        # The store accepts well over this (tests/store/test_poison_values.py); a header it
        # refused would dead-letter the whole update, so such a header is left out here.
        raise ValueError("the header is nested too deeply to send")
    rendered = json.dumps(
        _clean(as_dict), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    parsed.fallbacks |= _undecoded_text(parsed.dataset)
    return rendered


def _depth(value: Any) -> int:
    """How deeply JSON objects and arrays nest in `value` (a loop: no recursion limit)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in children)
    return deepest


def _undecoded_text(dataset: Dataset) -> set[str]:
    """Text attributes holding replacement characters, i.e. decoded best-effort."""
    found: set[str] = set()
    for element in dataset.iterall():
        if isinstance(element, RawDataElement) or element.VR not in _TEXT_VRS:
            continue
        if "\ufffd" in str(element.value):
            found.add(element.keyword or f"{element.tag:08X}")
    return found


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        if "BulkDataURI" in value:
            return None
        out = {}
        for key, item in value.items():
            cleaned = _clean(item)
            if cleaned is not None:
                out[key] = cleaned
        return out
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE[math.copysign(1.0, value) if math.isinf(value) else 0.0]
    return value


_NON_FINITE = {0.0: "NaN", 1.0: "Infinity", -1.0: "-Infinity"}


def _ae_title(title: str) -> str:
    """An AE title as the store can keep it: some senders pad the 16 bytes of their
    A-ASSOCIATE-RQ with NUL instead of spaces, and the store refuses NUL in any text (the
    whole update, acknowledged instances and all, would be dead-lettered)."""
    return title.replace("\x00", "").strip()


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
