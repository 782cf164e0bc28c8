"""A-ASSOCIATE-RQ bytes built by hand, for requests no DICOM library will send."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(
    contexts: Sequence[tuple[int, str, Sequence[str]]],
    calling: str = "RAWSCU",
    called: str = "STORESCP",
    user_items: bytes = b"",
    application_context: bytes = APPLICATION_CONTEXT,
) -> bytes:
    """A whole A-ASSOCIATE-RQ PDU: (context id, abstract syntax, transfer syntaxes) each."""
    body = struct.pack(">HH", 1, 0)
    body += called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    body += item(0x10, application_context)
    for context_id, abstract, syntaxes in contexts:
        value = bytes([context_id, 0, 0, 0]) + item(0x30, abstract.encode())
        value += b"".join(item(0x40, s.encode()) for s in syntaxes)
        body += item(0x20, value)
    body += item(0x50, item(0x51, struct.pack(">I", 16384)) + user_items)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, body); (0, b"") when the peer closed the connection first."""
    head = _read(sock, 6)
    if len(head) < 6:
        return 0, b""
    length = struct.unpack(">I", head[2:6])[0]
    return head[0], _read(sock, length)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return data


def ac_contexts(body: bytes) -> dict[int, tuple[int, str]]:
    """context id -> (result, transfer syntax) from an A-ASSOCIATE-AC body."""
    out: dict[int, tuple[int, str]] = {}
    pos = 68
    while pos + 4 <= len(body):
        kind, length = body[pos], struct.unpack_from(">H", body, pos + 2)[0]
        value = body[pos + 4 : pos + 4 + length]
        if kind == 0x21:
            syntax = value[8 : 8 + struct.unpack_from(">H", value, 6)[0]].decode().rstrip("\0")
            out[value[0]] = (value[2], syntax)
        pos += 4 + length
    return out
