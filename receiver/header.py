"""Read one received dataset's header: parse it, decode its text, validate its UIDs.

Pixel data is never decoded or even parsed: reading stops at the first pixel data element.
Every reason a header cannot be used is raised as a `HeaderError`; what the sender is told
is decided by receiver.intake, which maps each reason to a C-STORE status. receiver.record
turns a parsed header into the record the spool keeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Why a header cannot be used. A fixed set: it ends up as a metric label.
HeaderReason = Literal["missing_uid", "malformed_uid", "unparseable"]

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
# Values larger than this are not read while parsing a file (see parse_file).
_DEFER_BYTES = 64 * 1024
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_UNDEFINED = 0xFFFFFFFF
# Lenient on purpose: leading zeros inside a component are invalid DICOM but common in the
# wild and harmless as identifiers, so only structure and length are enforced.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


_TAGS: dict[str, int] = {}
_SPECIFIC_CHARACTER_SET = 0x00080005


def _get(dataset: Dataset, keyword: str, encodings: list[str] | None = None) -> Any:
    """The value of `keyword` in `dataset`, or None.

    The hot path of every instance: pydicom's own `dataset.get(keyword)` spends more time
    on keyword lookups and tag comparisons than on converting the value, so this converts
    the raw element directly (and leaves the dataset unchanged)."""
    tag = _TAGS.get(keyword)
    if tag is None:
        found = tag_for_keyword(keyword)
        if found is None:
            raise KeyError(f"not a DICOM keyword: {keyword}")
        tag = _TAGS[keyword] = found
    element = dataset.get_item(tag)
    if element is None:
        return None
    if isinstance(element, RawDataElement):
        if encodings is None:
            encodings = _encodings(dataset)
        element = convert_raw_data_element(element, encoding=encodings, ds=dataset)
    return element.value


def _encodings(dataset: Dataset) -> list[str]:
    """Python codecs for the dataset's SpecificCharacterSet (pydicom's rules, once)."""
    terms = _get(dataset, "SpecificCharacterSet", [default_encoding])
    return list(convert_encodings(terms))


class HeaderError(Exception):
    """Raised when a header cannot be used: it does not parse as DICOM, is truncated, or
    lacks a usable StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID.

    `reason` names the kind of failure; `comment` says it in words for the sender's
    ErrorComment and may quote the dataset's values (so it stays out of INFO logs unless
    we wrote every word). The instance cannot be recovered here: the sender gets an error
    status and has to send it again, corrected.
    """

    def __init__(self, reason: HeaderReason, comment: str) -> None:
        super().__init__(comment)
        self.reason: HeaderReason = reason
        self.comment = comment


@contextlib.contextmanager
def unparseable_on_failure() -> Iterator[None]:
    """Raise whatever pydicom raises on hostile bytes as HeaderError("unparseable").

    Needed around reading values as much as around parsing: values stay raw until first
    used, so a value pydicom cannot convert fails only when it is read."""
    try:
        yield
    except HeaderError:
        raise
    except Exception as exc:  # pydicom raises many types on hostile bytes
        raise HeaderError("unparseable", f"dataset cannot be parsed: {exc}"[:200]) from None


@dataclasses.dataclass
class ParsedHeader:
    """One instance's header, decoded and validated."""

    dataset: Dataset
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    size_bytes: int
    transfer_syntax_uid: str
    fallbacks: set[str]  # keywords whose text was decoded best-effort; grows as values are read
    encodings: list[str] = dataclasses.field(default_factory=list)


def parse(raw: bytes, transfer_syntax_uid: str) -> ParsedHeader:
    """Parse the header of a C-STORE dataset held in memory, encoded in `transfer_syntax_uid`."""
    if transfer_syntax_uid == DEFLATED:
        try:
            inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw)
        except zlib.error as exc:
            raise HeaderError("unparseable", f"deflated dataset does not inflate: {exc}") from None
    else:
        inflated = raw
    stream = io.BytesIO(inflated)
    return _parse(stream, len(inflated), transfer_syntax_uid, len(raw), None)


def parse_file(path: Path, transfer_syntax_uid: str, size_bytes: int) -> ParsedHeader:
    """Parse the header from the first bytes of a dataset file (receiver.incoming).

    The file holds the dataset as sent, except that a deflated one is already inflated;
    `size_bytes` is its size on the wire. Values over _DEFER_BYTES stay in the file until
    read (a 1 MiB name is read when asked for); bulk binary ones are dropped, since the
    representative header leaves bulk data out anyway: memory stays bounded whatever the
    file holds before its pixel data."""
    with open(path, "rb") as stream:
        total = os.fstat(stream.fileno()).st_size
        parsed = _parse(stream, total, transfer_syntax_uid, size_bytes, _DEFER_BYTES)
    dataset = parsed.dataset
    # pydicom reads a deferred value from `filename` when it is first used.
    dataset.filename = str(path)
    dataset.buffer = None
    dataset.fileobj_type = open
    dataset.timestamp = None
    for tag in [t for t, element in dataset._dict.items() if _deferred_bulk(element)]:
        del dataset._dict[tag]
    return parsed


def _parse(
    stream: BinaryIO,
    total: int,
    transfer_syntax_uid: str,
    size_bytes: int,
    defer_size: int | None,
) -> ParsedHeader:
    with unparseable_on_failure():
        dataset = _read(stream, total, transfer_syntax_uid, defer_size)
        uids = [_uid(dataset, keyword) for keyword in _REQUIRED_UIDS]
    fallbacks: set[str] = set()
    try:
        encodings = _encodings(dataset)
    except Exception:  # a SpecificCharacterSet pydicom cannot even read: decode as ASCII
        encodings = [default_encoding]
    return ParsedHeader(
        encodings=encodings,
        dataset=dataset,
        study_uid=uids[0],
        series_uid=uids[1],
        sop_instance_uid=uids[2],
        size_bytes=size_bytes,
        transfer_syntax_uid=str(transfer_syntax_uid),
        fallbacks=fallbacks,
    )


def _read(
    stream: BinaryIO, total: int, transfer_syntax_uid: str, defer_size: int | None
) -> Dataset:
    """Read up to the pixel data; a deflated dataset arrives here already inflated."""
    implicit = transfer_syntax_uid == IMPLICIT_LITTLE
    little = transfer_syntax_uid != EXPLICIT_BIG
    seen: list[tuple[int, int, int]] = []

    def stop(tag: int, vr: str | None, length: int) -> bool:
        # Remember where each top-level element ends, to catch truncation below.
        seen.append((tag, length, stream.tell()))
        return tag in _PIXEL_TAGS

    # Values stay raw until used: converting all ~250 elements of a CT header would cost
    # more than parsing it, and only a few are needed per instance.
    dataset = read_dataset(stream, implicit, little, stop_when=stop, defer_size=defer_size)
    _check_complete(seen, total)
    return dataset


def _deferred_bulk(element: Any) -> bool:
    """A value left in the file that is binary bulk data (never text we store)."""
    if not isinstance(element, RawDataElement) or element.value is not None:
        return False
    if element.length == 0:
        return False
    try:
        vr = dictionary_VR(element.tag)
    except KeyError:  # private or unknown: only its own VR says what it is
        vr = element.VR or "UN"
    return any(part.strip() in _BULK_VRS for part in str(vr).split(" or "))


def _check_complete(seen: list[tuple[int, int, int]], total: int) -> None:
    if not seen:
        raise HeaderError("unparseable", "dataset is empty or not DICOM")
    tag, length, end_of_header = seen[-1]
    if tag in _PIXEL_TAGS:
        if length != _UNDEFINED and end_of_header + length > total:
            raise HeaderError("unparseable", "dataset is truncated inside its pixel data")
        return
    if length == _UNDEFINED:
        return  # a sequence: its items were parsed with their own length checks
    missing = end_of_header + length - total
    if missing > 0:
        raise HeaderError(
            "unparseable", f"dataset is truncated: element {_tag(tag)} lacks {missing} bytes"
        )
    if missing < 0:
        raise HeaderError(
            "unparseable", f"dataset is truncated or has {-missing} stray bytes after {_tag(tag)}"
        )


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _uid(dataset: Dataset, keyword: str) -> str:
    element = _get(dataset, keyword)
    value = "" if element is None else element
    if isinstance(value, MultiValue):
        raise HeaderError("malformed_uid", f"{keyword} has more than one value")
    text = str(value).replace("\x00", "").strip()
    if not text:
        raise HeaderError("missing_uid", f"{keyword} is missing or empty")
    if len(text) > 64 or not _UID.match(text):
        raise HeaderError(
            "malformed_uid",
            f"{keyword} is malformed (expected digits and dots, at most 64 characters)",
        )
    return text


def text(header: ParsedHeader, keyword: str) -> str:
    """An attribute as Unicode text (values joined by backslash); empty when absent.

    Text that did not decode per SpecificCharacterSet was decoded best-effort by pydicom
    (replacement characters); the keyword is recorded in `header.fallbacks`.
    """
    value = _get(header.dataset, keyword, header.encodings)
    if value is None:
        return ""
    multi = isinstance(value, MultiValue)
    out = "\\".join(_scalar(v) for v in value) if multi else _scalar(value)
    if "\ufffd" in out:
        header.fallbacks.add(keyword)
    return out.replace("\x00", "")


def _scalar(value: Any) -> str:
    if isinstance(value, PersonName):
        return str(value).rstrip("\x00 ")
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value).strip()


def sop_class_uid(header: ParsedHeader, negotiated: str) -> str:
    """The dataset's SOPClassUID when well-formed, else `negotiated`, the one the C-STORE named.

    The negotiated class is valid by construction; a dataset's own SOPClassUID may not be,
    and the store would refuse the whole series' update for it."""
    value = text(header, "SOPClassUID").strip()
    if value and len(value) <= 64 and _UID.match(value):
        return value
    return negotiated if negotiated and len(negotiated) <= 64 and _UID.match(negotiated) else ""


def integer(header: ParsedHeader, keyword: str) -> int | None:
    """An IS attribute as int, or None when absent, empty or not a 32-bit integer."""
    value = _get(header.dataset, keyword, header.encodings)
    if isinstance(value, MultiValue):
        value = value[0] if value else None
    try:
        number = int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    if number is None or not -(2**31) <= number < 2**31:
        return None
    return number


def slice_position(header: ParsedHeader) -> float | None:
    """ImagePositionPatient along the slice normal (the cross product of
    ImageOrientationPatient's row and column directions), in mm; None when either is
    absent or not numbers. Orders the slices of a stack whatever their InstanceNumber."""
    try:
        position = [float(v) for v in _get(header.dataset, "ImagePositionPatient") or ()]
        orientation = [float(v) for v in _get(header.dataset, "ImageOrientationPatient") or ()]
    except (TypeError, ValueError):
        return None
    if len(position) != 3 or len(orientation) != 6:
        return None
    (rx, ry, rz), (cx, cy, cz) = orientation[:3], orientation[3:]
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    value = sum(p * n for p, n in zip(position, normal, strict=True))
    return value if math.isfinite(value) else None


def charset_fallback(header: ParsedHeader) -> None:
    """Record an unknown SpecificCharacterSet term: pydicom then decodes as ASCII/Latin-1."""
    terms = _get(header.dataset, "SpecificCharacterSet", header.encodings)
    if terms is None:
        return
    values = terms if isinstance(terms, MultiValue) else [terms]
    for term in values:
        cleaned = str(term).strip()
        if cleaned and cleaned not in python_encoding:
            header.fallbacks.add("SpecificCharacterSet")
