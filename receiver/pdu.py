"""DICOM Upper Layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 9/E) for a Storage SCP.

Only what an acceptor of C-STORE and C-ECHO needs: decode A-ASSOCIATE-RQ, build AC/RJ,
split P-DATA-TF into PDVs, read a command set and write C-STORE/C-ECHO responses. Pure
functions on bytes; the asyncio engine in receiver.server does the I/O.
"""

from __future__ import annotations

import dataclasses
import struct

from pydicom.uid import generate_uid

# PDU types
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# A stable UID under pydicom's root, derived from our name (PS3.7 D.3.3.2: identifies us).
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["seriesflow receiver"])
IMPLEMENTATION_VERSION = b"SERIESFLOW_01"

# DIMSE command fields
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATASET = 0x0101


class ProtocolError(Exception):
    """The peer sent bytes that break PS3.8/PS3.7; the association is aborted."""


@dataclasses.dataclass
class PresentationContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclasses.dataclass
class AssociateRequest:
    called_ae_title: str
    calling_ae_title: str
    contexts: list[PresentationContext]
    max_pdu_length: int  # what the requestor can receive; 0 = unlimited
    echo_fields: bytes  # bytes 2..68 of the body, echoed in the AC as PS3.8 asks


def _uid(data: bytes) -> str:
    return data.rstrip(b"\x00 ").decode("ascii", "replace")


def _items(data: bytes, start: int) -> list[tuple[int, bytes]]:
    """Variable items: type(1) reserved(1) length(2, BE) value."""
    items = []
    pos = start
    while pos + 4 <= len(data):
        kind, length = data[pos], struct.unpack_from(">H", data, pos + 2)[0]
        value = data[pos + 4 : pos + 4 + length]
        if len(value) != length:
            raise ProtocolError("item runs past the end of its PDU")
        items.append((kind, value))
        pos += 4 + length
    if pos != len(data):
        raise ProtocolError("trailing bytes after the last item")
    return items


def parse_associate_rq(body: bytes) -> AssociateRequest:
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    called = body[4:20].decode("ascii", "replace").strip()
    calling = body[20:36].decode("ascii", "replace").strip()
    contexts: list[PresentationContext] = []
    max_pdu = 0
    for kind, value in _items(body, 68):
        if kind == 0x20:  # presentation context
            if len(value) < 4:
                raise ProtocolError("presentation context item too short")
            abstract, syntaxes = "", []
            for sub_kind, sub_value in _items(value, 4):
                if sub_kind == 0x30:
                    abstract = _uid(sub_value)
                elif sub_kind == 0x40:
                    syntaxes.append(_uid(sub_value))
            contexts.append(PresentationContext(value[0], abstract, syntaxes))
        elif kind == 0x50:  # user information
            for sub_kind, sub_value in _items(value, 0):
                if sub_kind == 0x51 and len(sub_value) == 4:
                    max_pdu = struct.unpack(">I", sub_value)[0]
    return AssociateRequest(called, calling, contexts, max_pdu, body[2:68])


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def associate_ac(
    request: AssociateRequest, results: list[tuple[int, int, str]], max_pdu_length: int
) -> bytes:
    """A-ASSOCIATE-AC; `results` holds (context id, result, transfer syntax) per context."""
    body = bytearray(struct.pack(">HH", 1, 0)[:2])  # protocol version 1
    body += request.echo_fields
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, result, syntax in results:
        body += _item(0x21, bytes([context_id, 0, result, 0]) + _item(0x40, syntax.encode()))
    user = _item(0x51, struct.pack(">I", max_pdu_length))
    user += _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    user += _item(0x55, IMPLEMENTATION_VERSION)
    body += _item(0x50, user)
    return _pdu(ASSOCIATE_AC, bytes(body))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes([0, result, source, reason]))


def release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT; source 2 = service provider (the upper layer itself), 0 = service user."""
    return _pdu(ABORT, bytes([0, 0, source, reason]))


def pdvs(body: bytes) -> list[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) of each PDV in a P-DATA-TF body.

    Fragments are views into `body`, not copies: a CT slice is half a megabyte."""
    out = []
    view = memoryview(body)
    pos = 0
    while pos < len(body):
        if pos + 6 > len(body):
            raise ProtocolError("P-DATA-TF item header cut short")
        length = struct.unpack_from(">I", body, pos)[0]
        if length < 2 or pos + 4 + length > len(body):
            raise ProtocolError("P-DATA-TF item length does not fit its PDU")
        out.append((body[pos + 4], body[pos + 5], view[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    return out


def p_data(context_id: int, command: bytes, max_pdu_length: int) -> bytes:
    """A command set as one or more P-DATA-TF PDUs within the peer's maximum PDU length."""
    room = max_pdu_length - 6 if max_pdu_length else len(command)
    room = max(room, 1)
    out = bytearray()
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        last = start + room >= len(command)
        control = 0x03 if last else 0x01  # command, last fragment / command, more
        item = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
        out += _pdu(P_DATA_TF, item)
    return bytes(out)


# -- DIMSE command sets (implicit VR little endian, group 0000) ---------------------------


def parse_command(data: bytes) -> dict[int, bytes]:
    """Element number -> raw value of a command set."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        value = data[pos + 8 : pos + 8 + length]
        if len(value) != length:
            raise ProtocolError("command set element runs past its end")
        if group == 0x0000:
            out[element] = value
        pos += 8 + length
    if pos != len(data):
        raise ProtocolError("stray bytes after the command set")
    return out


def us(command: dict[int, bytes], element: int) -> int:
    value = command.get(element, b"")
    if len(value) != 2:
        raise ProtocolError(f"command element (0000,{element:04X}) missing or not US")
    return int(struct.unpack("<H", value)[0])


def ui(command: dict[int, bytes], element: int) -> str:
    return _uid(command.get(element, b""))


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def response(
    command_field: int,
    message_id: int,
    sop_class: str,
    sop_instance: str | None,
    status: int,
    comment: str = "",
) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set."""
    body = _element(0x0002, _even(sop_class.encode(), b"\x00"))
    body += _element(0x0100, struct.pack("<H", command_field))
    body += _element(0x0120, struct.pack("<H", message_id))
    body += _element(0x0800, struct.pack("<H", NO_DATASET))
    body += _element(0x0900, struct.pack("<H", status))
    if comment:
        text = comment[:64].encode("ascii", "replace")
        body += _element(0x0902, _even(text, b" "))
    if sop_instance is not None:
        body += _element(0x1000, _even(sop_instance.encode(), b"\x00"))
    return _element(0x0000, struct.pack("<I", len(body))) + body
