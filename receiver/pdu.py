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
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000  # a response's command field is its request's with this bit set
NO_DATASET = 0x0101
# Requests we do not perform; each is answered with its response and UNRECOGNIZED_OPERATION
# (PS3.7 C.5.x: the general status 0211H), so the association goes on.
UNSUPPORTED_REQUESTS = {
    0x0010: "C-GET",
    0x0020: "C-FIND",
    0x0021: "C-MOVE",
    0x0100: "N-EVENT-REPORT",
    0x0110: "N-GET",
    0x0120: "N-SET",
    0x0130: "N-ACTION",
    0x0140: "N-CREATE",
    0x0150: "N-DELETE",
}
UNRECOGNIZED_OPERATION = 0x0211
SOP_CLASS_NOT_SUPPORTED = 0x0122


# A-ABORT sources and reasons (PS3.8 9.3.8)
ABORT_SOURCE_USER, ABORT_SOURCE_PROVIDER = 0, 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PARAMETER = 4
ABORT_UNEXPECTED_PARAMETER = 5
ABORT_INVALID_PARAMETER = 6

# A-ASSOCIATE-RJ (result, source, reason) (PS3.8 9.3.4)
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_APPLICATION_CONTEXT_NOT_SUPPORTED = (RJ_PERMANENT, 1, 2)
RJ_USER_NO_REASON = (RJ_PERMANENT, 1, 1)  # service-user, no reason given: user identity
RJ_PROTOCOL_VERSION_NOT_SUPPORTED = (RJ_PERMANENT, 2, 2)
RJ_TEMPORARY_CONGESTION = (RJ_TRANSIENT, 3, 1)
RJ_LOCAL_LIMIT_EXCEEDED = (RJ_TRANSIENT, 3, 2)
RJ_REQUEST_TOO_LARGE = (RJ_PERMANENT, 3, 2)  # local-limit-exceeded; resending cannot help


class ProtocolError(Exception):
    """The peer sent bytes that break PS3.8/PS3.7; the association is aborted with
    `abort_reason` (PS3.8 9.3.8, service-provider source)."""

    abort_reason = ABORT_REASON_NOT_SPECIFIED


class InvalidParameter(ProtocolError):
    """A PDU field holds a value PS3.8 does not allow (e.g. an even presentation-context ID)."""

    abort_reason = ABORT_INVALID_PARAMETER


class UnexpectedPdu(ProtocolError):
    """A PDU of a type not allowed in the association's state (e.g. P-DATA before A-ASSOCIATE)."""

    abort_reason = ABORT_UNEXPECTED_PDU


@dataclasses.dataclass
class PresentationContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclasses.dataclass(frozen=True)
class UserIdentity:
    """User Identity negotiation sub-item (PS3.7 D.3.3.7): type 1 username, 2 username and
    passcode, 3 Kerberos, 4 SAML, 5 JWT."""

    kind: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes

    def __repr__(self) -> str:  # never the passcode, ticket or token
        return f"UserIdentity(kind={self.kind})"


@dataclasses.dataclass(frozen=True)
class RoleProposal:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): the roles the requestor proposes
    for itself."""

    sop_class_uid: str
    scu: bool
    scp: bool


@dataclasses.dataclass
class AssociateRequest:
    called_ae_title: str
    calling_ae_title: str
    contexts: list[PresentationContext]
    max_pdu_length: int  # what the requestor can receive; 0 = unlimited
    echo_fields: bytes  # bytes 2..68 of the body, echoed in the AC as PS3.8 asks
    protocol_version: int = 1
    application_context: str = APPLICATION_CONTEXT
    implementation_class_uid: str = ""
    implementation_version: str = ""
    async_window: tuple[int, int] | None = None  # (invoked, performed) when proposed
    roles: list[RoleProposal] = dataclasses.field(default_factory=list)
    user_identity: UserIdentity | None = None


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


def _context(value: bytes, seen: set[int]) -> PresentationContext:
    if len(value) < 4:
        raise ProtocolError("presentation context item too short")
    context_id = value[0]
    # PS3.8 9.3.2.2: odd integers 1-255, unique in the request. A duplicate would make the
    # AC's answer ambiguous, so the whole request is invalid (abort, invalid parameter value).
    if context_id % 2 == 0:
        raise InvalidParameter(f"presentation context ID {context_id} is not odd")
    if context_id in seen:
        raise InvalidParameter(f"presentation context ID {context_id} proposed twice")
    seen.add(context_id)
    abstract, syntaxes = "", []
    for sub_kind, sub_value in _items(value, 4):
        if sub_kind == 0x30:
            abstract = _uid(sub_value)
        elif sub_kind == 0x40:
            syntaxes.append(_uid(sub_value))
    return PresentationContext(context_id, abstract, syntaxes)


def _role(value: bytes) -> RoleProposal:
    if len(value) < 2:
        raise ProtocolError("role selection sub-item too short")
    length = struct.unpack_from(">H", value)[0]
    if len(value) != 2 + length + 2:
        raise ProtocolError("role selection sub-item length does not match its UID")
    return RoleProposal(_uid(value[2 : 2 + length]), value[2 + length] == 1, value[3 + length] == 1)


def _user_identity(value: bytes) -> UserIdentity:
    if len(value) < 4:
        raise ProtocolError("user identity sub-item too short")
    kind, wants_response = value[0], value[1] == 1
    primary_length = struct.unpack_from(">H", value, 2)[0]
    primary = value[4 : 4 + primary_length]
    rest = value[4 + primary_length :]
    if len(primary) != primary_length or len(rest) < 2:
        raise ProtocolError("user identity sub-item fields run past its end")
    secondary_length = struct.unpack_from(">H", rest)[0]
    if len(rest) != 2 + secondary_length:
        raise ProtocolError("user identity secondary field does not match its length")
    return UserIdentity(kind, wants_response, bytes(primary), bytes(rest[2:]))


def _user_information(request: AssociateRequest, value: bytes) -> None:
    for sub_kind, sub_value in _items(value, 0):
        if sub_kind == 0x51 and len(sub_value) == 4:
            request.max_pdu_length = struct.unpack(">I", sub_value)[0]
        elif sub_kind == 0x52:
            request.implementation_class_uid = _uid(sub_value)
        elif sub_kind == 0x55:
            request.implementation_version = sub_value.decode("ascii", "replace").strip()
        elif sub_kind == 0x53 and len(sub_value) == 4:
            invoked, performed = struct.unpack(">HH", sub_value)
            request.async_window = (invoked, performed)
        elif sub_kind == 0x54:
            request.roles.append(_role(sub_value))
        elif sub_kind == 0x58:
            request.user_identity = _user_identity(sub_value)


def parse_associate_rq(body: bytes) -> AssociateRequest:
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    # AE titles are space-padded (PS3.8 9.3.2); some senders pad with NUL instead.
    called = body[4:20].decode("ascii", "replace").strip(" \x00")
    calling = body[20:36].decode("ascii", "replace").strip(" \x00")
    version = struct.unpack_from(">H", body)[0]
    request = AssociateRequest(called, calling, [], 0, body[2:68], protocol_version=version)
    seen: set[int] = set()
    for kind, value in _items(body, 68):
        if kind == 0x10:  # application context
            request.application_context = _uid(value)
        elif kind == 0x20:  # presentation context
            request.contexts.append(_context(value, seen))
        elif kind == 0x50:  # user information
            _user_information(request, value)
    return request


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


@dataclasses.dataclass(frozen=True)
class Negotiated:
    """What the AC answers beyond the presentation contexts (PS3.7 D.3.3)."""

    roles: list[RoleProposal] = dataclasses.field(default_factory=list)  # accepted roles
    async_window: bool = False  # answer the window with 1/1: no asynchronous operations
    user_identity_response: bytes | None = None  # None: no response sub-item


def associate_ac(
    request: AssociateRequest,
    results: list[tuple[int, int, str]],
    max_pdu_length: int,
    negotiated: Negotiated | None = None,
) -> bytes:
    """A-ASSOCIATE-AC; `results` holds (context id, result, transfer syntax) per context."""
    negotiated = negotiated or Negotiated()
    body = bytearray(struct.pack(">HH", 1, 0)[:2])  # protocol version 1
    body += request.echo_fields
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, result, syntax in results:
        body += _item(0x21, bytes([context_id, 0, result, 0]) + _item(0x40, syntax.encode()))
    user = _item(0x51, struct.pack(">I", max_pdu_length))
    user += _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    if negotiated.async_window:
        user += _item(0x53, struct.pack(">HH", 1, 1))
    for role in negotiated.roles:
        uid = role.sop_class_uid.encode()
        user += _item(0x54, struct.pack(">H", len(uid)) + uid + bytes([role.scu, role.scp]))
    user += _item(0x55, IMPLEMENTATION_VERSION)
    if negotiated.user_identity_response is not None:
        response = negotiated.user_identity_response
        user += _item(0x59, struct.pack(">H", len(response)) + response)
    body += _item(0x50, user)
    return _pdu(ASSOCIATE_AC, bytes(body))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes([0, result, source, reason]))


def release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    """A-ABORT; source 2 = service provider (the upper layer itself), 0 = service user;
    `reason` one of the ABORT_* values (meaningful only with source 2)."""
    return _pdu(ABORT, bytes([0, 0, source, reason]))


# -- P-DATA-TF (PS3.8 9.3.5) ---------------------------------------------------------------

PDV_HEADER = 6  # item length (4), presentation context ID (1), message control header (1)
PDV_COMMAND, PDV_LAST = 0x01, 0x02  # message control header bits (PS3.8 E.2)


class UnexpectedParameter(ProtocolError):
    """A well-formed PDV that does not fit the message being assembled: a dataset fragment
    without its command, a new command while a dataset is pending, a fragment on another
    presentation context than its message's."""

    abort_reason = ABORT_UNEXPECTED_PARAMETER


class UnrecognizedPdu(ProtocolError):
    """A PDU type PS3.8 does not define."""

    abort_reason = ABORT_UNRECOGNIZED_PDU


def pdv_header(data: bytes) -> tuple[int, int, int]:
    """(fragment length, context id, message control header) of one PDV item's header."""
    length = struct.unpack_from(">I", data)[0]
    if length < 2:
        raise InvalidParameter("P-DATA-TF item shorter than its own header")
    return length - 2, data[4], data[5]


def pdvs(body: bytes) -> list[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) of each PDV in a P-DATA-TF body.

    Fragments are views into `body`, not copies: a CT slice is half a megabyte."""
    out = []
    view = memoryview(body)
    pos = 0
    while pos < len(body):
        if pos + 6 > len(body):
            raise InvalidParameter("P-DATA-TF item header cut short")
        length = struct.unpack_from(">I", body, pos)[0]
        if length < 2 or pos + 4 + length > len(body):
            raise InvalidParameter("P-DATA-TF item length does not fit its PDU")
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
            raise InvalidParameter("command set element runs past its end")
        if group == 0x0000:
            out[element] = value
        pos += 8 + length
    if pos != len(data):
        raise InvalidParameter("stray bytes after the command set")
    return out


def us(command: dict[int, bytes], element: int) -> int:
    value = command.get(element, b"")
    if len(value) != 2:
        raise InvalidParameter(f"command element (0000,{element:04X}) missing or not US")
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
    """A response command set (C-STORE-RSP, C-ECHO-RSP, or the answer to a request we do
    not perform)."""
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
