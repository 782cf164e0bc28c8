"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root Query/Retrieve - FIND, answered
through the store's Query RPC, so C-FIND matches exactly as QIDO-RS and gRPC do (one
matching engine, store.matching). The receiver never opens PostgreSQL.

One C-FIND-RQ is one `Find`: its identifier is read with pydicom in the context's transfer
syntax and becomes a QueryRequest (keys with a value are match keys, empty keys return
fields); each match the store streams back becomes one pending C-FIND-RSP with only the
requested keys, QueryRetrieveLevel and, when a returned text needs it, SpecificCharacterSet
(PS3.4 C.4.1.1.3.2). A Find runs as its own task so the engine keeps reading the
association: a C-CANCEL-RQ for it cancels the store call and ends it with status Cancel.

Queries need the store's read scope: they carry the token of SERIESFLOW_STORE_READ_TOKEN_FILE
(the receiver's own token is a write token), over the same address and TLS settings as the
StoreSeries stream.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from seriesflow.receiver import pdu
from seriesflow.receiver.contexts import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

C_FIND_RSP = 0x8020

# C-FIND statuses (PS3.4 C.4.1.1.4)
SUCCESS: Final = 0x0000
PENDING: Final = 0xFF00
PENDING_WARNING: Final = 0xFF01  # optional keys not supported for matching or existence
CANCEL: Final = 0xFE00
OUT_OF_RESOURCES: Final = 0xA700
IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900
UNABLE_TO_PROCESS: Final = 0xC000
STORE_REFUSED: Final = 0xC001  # unable to process: the store refused our credentials

# What a failed Query RPC becomes: every gRPC code has its status (a test keeps it complete).
GRPC_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: UNABLE_TO_PROCESS,  # never raised; listed for completeness
    grpc.StatusCode.CANCELLED: UNABLE_TO_PROCESS,
    grpc.StatusCode.UNKNOWN: UNABLE_TO_PROCESS,
    grpc.StatusCode.INVALID_ARGUMENT: IDENTIFIER_DOES_NOT_MATCH,  # a bad date, UID, range
    grpc.StatusCode.DEADLINE_EXCEEDED: OUT_OF_RESOURCES,
    grpc.StatusCode.NOT_FOUND: UNABLE_TO_PROCESS,
    grpc.StatusCode.ALREADY_EXISTS: UNABLE_TO_PROCESS,
    grpc.StatusCode.PERMISSION_DENIED: STORE_REFUSED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OUT_OF_RESOURCES,
    grpc.StatusCode.FAILED_PRECONDITION: UNABLE_TO_PROCESS,
    grpc.StatusCode.ABORTED: OUT_OF_RESOURCES,
    grpc.StatusCode.OUT_OF_RANGE: IDENTIFIER_DOES_NOT_MATCH,
    grpc.StatusCode.UNIMPLEMENTED: UNABLE_TO_PROCESS,
    grpc.StatusCode.INTERNAL: UNABLE_TO_PROCESS,
    grpc.StatusCode.UNAVAILABLE: OUT_OF_RESOURCES,  # store down or database down: retry later
    grpc.StatusCode.DATA_LOSS: UNABLE_TO_PROCESS,
    grpc.StatusCode.UNAUTHENTICATED: STORE_REFUSED,
}

LEVELS: Final[dict[str, int]] = {
    "PATIENT": pb.QUERY_LEVEL_PATIENT,
    "STUDY": pb.QUERY_LEVEL_STUDY,
    "SERIES": pb.QUERY_LEVEL_SERIES,
    "IMAGE": pb.QUERY_LEVEL_IMAGE,
}
# The levels each information model has (PS3.4 C.6.1, C.6.2).
MODEL_LEVELS: Final[dict[str, tuple[str, ...]]] = {
    PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
}
_IMPLICIT, _BIG_ENDIAN = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
_SPECIFIC_CHARACTER_SET, _QUERY_RETRIEVE_LEVEL = 0x00080005, 0x00080052
_RETRIEVE_AE_TITLE = 0x00080054
# VRs whose text is in the identifier's character set (PS3.5 6.1.2.3); the rest are ASCII.
_CHARSET_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_BINARY_VRS: Final = frozenset(
    {"AT", "FD", "FL", "OB", "OD", "OF", "OL", "OV", "OW", "SL", "SS", "SV", "UL", "UN", "US", "UV"}
)
_UTF8: Final = "ISO_IR 192"
_COMMENT_MAX = 64


class _Unanswerable(Exception):
    """A match from the store that cannot be written as a response identifier."""


class BadIdentifier(Exception):
    """The C-FIND-RQ identifier cannot be a query of its SOP class: answered 0xA900."""


@dataclass(frozen=True)
class Returned:
    """A key of the request, returned in every response: its tag and VR."""

    tag: BaseTag
    vr: str


@dataclass
class Query:
    """A C-FIND identifier read: the store's request and what every response carries."""

    level: str
    request: pb.QueryRequest
    returned: list[Returned]
    charset: list[str]  # the request's SpecificCharacterSet terms ([] when absent)
    warning: bool = False  # some key is matched or returned only partly (sequences, binary)
    key_tags: list[str] = field(default_factory=list)  # for logs: tags, never values


def _text(raw: bytes) -> str:
    """The value of an ASCII-only VR, padding removed, values still backslash-separated."""
    text = raw.decode("latin-1")
    return "\\".join(part.strip(" \x00") for part in text.split("\\"))


def _matching_value(ds: Dataset, tag: BaseTag, vr: str) -> str:
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and vr not in _CHARSET_VRS and vr != "SQ":
        return _text(raw.value or b"")
    value = ds[tag].value  # decoded in the identifier's SpecificCharacterSet by pydicom
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _vr(ds: Dataset, tag: BaseTag) -> str:
    raw = ds.get_item(tag)
    vr = raw.VR if raw is not None else None
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    return str(vr).split(" or ")[0]  # "US or SS": either, for a zero-length answer


def parse_identifier(data: bytes, transfer_syntax: str, sop_class: str) -> Query:
    """The Query a C-FIND-RQ identifier asks; BadIdentifier when it cannot be one."""
    try:
        ds = read_dataset(
            io.BytesIO(data), transfer_syntax == _IMPLICIT, transfer_syntax != _BIG_ENDIAN
        )
        level_element = ds.get(_QUERY_RETRIEVE_LEVEL)
        level = str(level_element.value if level_element is not None else "").strip().upper()
        charset_element = ds.get(_SPECIFIC_CHARACTER_SET)
    except Exception as exc:  # pydicom raises many kinds for broken bytes
        raise BadIdentifier(f"identifier does not parse: {exc}") from None
    levels = MODEL_LEVELS[sop_class]
    if level not in levels:
        raise BadIdentifier(f"QueryRetrieveLevel {level!r} is not one of {', '.join(levels)}")
    charset: list[str] = []
    if charset_element is not None and charset_element.value:
        value = charset_element.value
        charset = [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]
    query = Query(level, pb.QueryRequest(level=LEVELS[level]), [], charset)  # type: ignore[arg-type]
    for tag in list(ds.keys()):
        tag = Tag(tag)
        if tag.group in (0x0000, 0x0002) or tag in (_SPECIFIC_CHARACTER_SET, _QUERY_RETRIEVE_LEVEL):
            continue
        vr = _vr(ds, tag)
        query.returned.append(Returned(tag, vr))
        query.key_tags.append(f"{tag:08X}")
        if tag == _RETRIEVE_AE_TITLE:
            continue  # answered by us, not the catalog
        key = f"{tag:08X}"
        if vr == "SQ" or vr in _BINARY_VRS:
            # Not matched (sequence matching is optional, PS3.4 C.2.2.2.6); returned from
            # the representative header where the store has one.
            try:
                present = bool(ds[tag].value)
            except Exception:
                present = True
            query.warning |= present
            query.request.include_fields.append(key)
            continue
        try:
            value = _matching_value(ds, tag, vr)
        except Exception as exc:
            raise BadIdentifier(
                f"({tag.group:04X},{tag.element:04X}) does not decode: {exc}"
            ) from None
        if value.strip(" ") == "":
            query.request.include_fields.append(key)
        else:
            query.request.match.append(pb.QueryKey(key=key, value=value))
    return query


def _empty(returned: Returned) -> DataElement:
    if returned.vr == "SQ":
        return DataElement(returned.tag, "SQ", Sequence())
    return DataElement(returned.tag, returned.vr, None)


def _element(returned: Returned, element: dict[str, Any]) -> DataElement:
    """One DICOM JSON element as a pydicom element; zero length when it will not convert."""
    key = f"{returned.tag:08X}"
    try:
        return Dataset.from_json({key: element})[returned.tag]
    except Exception:  # a header value pydicom cannot take back (rare): the key without value
        return _empty(returned)


def _texts(ds: Dataset) -> list[str]:
    out: list[str] = []
    for elem in ds.iterall():
        if elem.VR in _CHARSET_VRS and elem.value is not None:
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            out.extend(str(v) for v in values)
    return out


def _charset(texts: list[str], requested: list[str]) -> str | None:
    """SpecificCharacterSet of a response: none for ASCII; else the request's own single-byte
    set when it can write every value (an older client reads what it asked for), else UTF-8."""
    if all(t.isascii() for t in texts):
        return None
    if len(requested) == 1 and not requested[0].startswith("ISO 2022"):
        encoding = python_encoding.get(requested[0].strip())
        if encoding is not None and requested[0].strip() not in ("ISO_IR 6", ""):
            try:
                for text in texts:
                    text.encode(encoding)
                return requested[0].strip()
            except UnicodeEncodeError:
                pass
    return _UTF8


def response_identifier(query: Query, match: dict[str, Any], ae_title: str) -> Dataset:
    """The identifier of one pending response: the requested keys only (PS3.4 C.4.1.1.3.2)."""
    ds = Dataset()
    for returned in query.returned:
        if returned.tag == _RETRIEVE_AE_TITLE:
            ds.add(DataElement(returned.tag, "AE", ae_title))
            continue
        element = match.get(f"{returned.tag:08X}")
        ds.add(_element(returned, element) if isinstance(element, dict) else _empty(returned))
    ds.QueryRetrieveLevel = query.level
    charset = _charset(_texts(ds), query.charset)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = transfer_syntax != _BIG_ENDIAN
    out.is_implicit_VR = transfer_syntax == _IMPLICIT
    write_dataset(out, ds)
    return out.getvalue()


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def response_command(
    message_id: int, sop_class: str, status: int, *, dataset: bool, comment: str = ""
) -> bytes:
    """A C-FIND-RSP command set (implicit VR little endian, PS3.7 9.3.2.2)."""
    uid = sop_class.encode()
    body = _command_element(0x0002, uid + b"\x00" if len(uid) % 2 else uid)
    body += _command_element(0x0100, struct.pack("<H", C_FIND_RSP))
    body += _command_element(0x0120, struct.pack("<H", message_id))
    # Any value but 0101H says an identifier follows (PS3.7 E.1-1).
    body += _command_element(0x0800, struct.pack("<H", 0x0001 if dataset else pdu.NO_DATASET))
    body += _command_element(0x0900, struct.pack("<H", status))
    if comment:
        text = comment[:_COMMENT_MAX].encode("ascii", "replace")
        body += _command_element(0x0902, text + b" " if len(text) % 2 else text)
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def dataset_pdus(context_id: int, data: bytes, max_pdu_length: int) -> bytes:
    """A dataset as P-DATA-TF PDUs (dataset PDVs, the last one flagged) within the peer's
    maximum PDU length."""
    room = max(max_pdu_length - 6, 1) if max_pdu_length else max(len(data), 1)
    out = bytearray()
    for start in range(0, max(len(data), 1), room):
        fragment = data[start : start + room]
        control = pdu.PDV_LAST if start + room >= len(data) else 0x00
        item = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
        out += struct.pack(">BBI", pdu.P_DATA_TF, 0, len(item)) + item
    return bytes(out)


def read_token(path: Path | None) -> str | None:
    """The read token (first line that is not blank or a # comment), read at each query so a
    rotated file takes effect; None without a file. OSError/ValueError when unusable."""
    if path is None:
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            return token
    raise ValueError(f"{path} holds no token")


Send = Callable[[bytes], Awaitable[None]]


class Finder:
    """The C-FIND service of one DICOM engine: a gRPC channel to the store, made on the
    engine's event loop at the first query (grpc.aio channels belong to one loop)."""

    def __init__(
        self,
        address: str,
        ae_title: str,
        *,
        channel_credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, int]] | None = None,
        read_token_file: Path | None = None,
    ) -> None:
        self.address = address
        self.ae_title = ae_title
        self._credentials = channel_credentials
        self._options = options or []
        self.read_token_file = read_token_file
        self._channel: grpc.aio.Channel | None = None

    def stub(self) -> Any:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, options=self._options
                )
        return pb_grpc.SeriesStoreStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


@dataclass
class Outcome:
    status: int
    comment: str = ""
    matches: int = 0


class Find:
    """One C-FIND operation on one association; `run()` sends every response."""

    def __init__(
        self,
        finder: Finder,
        message_id: int,
        context_id: int,
        sop_class: str,
        transfer_syntax: str,
        send: Send,
        max_pdu_length: int,
    ) -> None:
        self.finder = finder
        self.message_id, self.context_id = message_id, context_id
        self.sop_class, self.transfer_syntax = sop_class, transfer_syntax
        self.send = send
        self.max_pdu_length = max_pdu_length
        self.cancelled = False
        self._call: Any = None

    def cancel(self) -> None:
        """C-CANCEL-RQ: stop the store call; the operation ends with status Cancel."""
        self.cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def run(self, identifier: bytes | None, refusal: tuple[int, str] | None) -> Outcome:
        if refusal is not None:
            outcome = Outcome(*refusal)
        elif identifier is None:
            outcome = Outcome(IDENTIFIER_DOES_NOT_MATCH, "C-FIND-RQ without an identifier")
        else:
            outcome = await self._query(identifier)
        await self.send(self._command(outcome.status, dataset=False, comment=outcome.comment))
        return outcome

    def _command(self, status: int, *, dataset: bool, comment: str = "") -> bytes:
        command = response_command(
            self.message_id, self.sop_class, status, dataset=dataset, comment=comment
        )
        return pdu.p_data(self.context_id, command, self.max_pdu_length)

    async def _query(self, identifier: bytes) -> Outcome:
        try:
            query = parse_identifier(identifier, self.transfer_syntax, self.sop_class)
        except BadIdentifier as exc:
            return Outcome(IDENTIFIER_DOES_NOT_MATCH, str(exc))
        try:
            token = read_token(self.finder.read_token_file)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            _log.error("C-FIND: read token unusable", extra={"fields": {"error": str(exc)}})
            return Outcome(UNABLE_TO_PROCESS, "receiver's store read token file is unusable")
        metadata = None if token is None else (("authorization", f"Bearer {token}"),)
        matches = 0
        try:
            self._call = self.finder.stub().Query(query.request, metadata=metadata)
            warning = query.warning
            while True:
                if self.cancelled:
                    return Outcome(CANCEL, "", matches)
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                warning |= bool(message.unsupported_keys)
                for match in message.matches:
                    if self.cancelled:
                        return Outcome(CANCEL, "", matches)
                    await self.send(self._pending(query, match.dataset_json, warning))
                    matches += 1
                    # drain() does not yield while the transport has room: let the engine
                    # read a C-CANCEL-RQ between matches.
                    await asyncio.sleep(0)
        except grpc.aio.AioRpcError as exc:
            if self.cancelled:
                return Outcome(CANCEL, "", matches)
            code = exc.code()
            comment = _store_comment(code, exc.details() or "")
            return Outcome(GRPC_STATUS.get(code, UNABLE_TO_PROCESS), comment, matches)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.cancelled and (current is None or not current.cancelling()):
                return Outcome(CANCEL, "", matches)  # our own call.cancel(), not the task's
            raise
        except _Unanswerable as exc:
            _log.error("C-FIND: a match cannot be answered", extra={"fields": {"error": str(exc)}})
            return Outcome(UNABLE_TO_PROCESS, "a match could not be encoded", matches)
        finally:
            self._call = None
        return Outcome(SUCCESS, "", matches)

    def _pending(self, query: Query, match_json: str, warning: bool) -> bytes:
        """The PDUs of one pending response (command, then identifier)."""
        try:
            match = json.loads(match_json)
            ds = response_identifier(query, match, self.finder.ae_title)
            data = encode(ds, self.transfer_syntax)
        except Exception as exc:  # not DICOM JSON, or a value pydicom cannot write
            raise _Unanswerable(f"{type(exc).__name__}: {exc}") from None
        status = PENDING_WARNING if warning else PENDING
        return self._command(status, dataset=True) + dataset_pdus(
            self.context_id, data, self.max_pdu_length
        )


def _store_comment(code: grpc.StatusCode, details: str) -> str:
    """An ErrorComment (at most 64 characters) for a failed Query RPC."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return "catalog unavailable (store or its database down); retry later"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return "store refused the query: needs a read token"
    text = f"store: {details}" if details else f"store failed: {code.name}"
    return text[:_COMMENT_MAX]
