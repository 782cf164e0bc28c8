"""DIMSE messages on a raw socket: the fragments, contexts and orders no DICOM library sends.

Command sets are encoded here by hand (implicit VR little endian, group 0000, PS3.7 E) and
responses decoded with pydicom, so the receiver's own encoder is not what checks it.
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from rx_assoc import ac_contexts, associate_rq, read_pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

C_STORE, C_ECHO, C_FIND, C_GET, C_MOVE, C_CANCEL = 0x0001, 0x0030, 0x0020, 0x0010, 0x0021, 0x0FFF
N_ACTION = 0x0130
NO_DATASET, WITH_DATASET = 0x0101, 0x0000

# context id -> (abstract syntax, transfer syntax) proposed by default: one syntax each.
DEFAULT_CONTEXTS: Sequence[tuple[int, str, Sequence[str]]] = (
    (1, CT, [EXPLICIT]),
    (3, VERIFICATION, [IMPLICIT]),
    (5, MR, [EXPLICIT]),
    (7, CT, [DEFLATED]),
)


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def ui(value: str) -> bytes:
    data = value.encode()
    return data + b"\x00" * (len(data) % 2)


def command_set(elements: dict[int, bytes]) -> bytes:
    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in sorted(elements.items()))
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body


def request(
    field: int,
    message_id: int,
    *,
    sop_class: str | None = CT,
    sop_instance: str | None = None,
    dataset: bool = False,
) -> bytes:
    elements = {0x0100: us(field), 0x0110: us(message_id)}
    elements[0x0800] = us(WITH_DATASET if dataset else NO_DATASET)
    if sop_class is not None:
        elements[0x0002] = ui(sop_class)
    if sop_instance is not None:
        elements[0x1000] = ui(sop_instance)
    if field == C_STORE:
        elements[0x0700] = us(0)  # priority
    return command_set(elements)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


class RawAssociation:
    """One association opened with a hand-built A-ASSOCIATE-RQ; `accepted` maps context
    IDs to their result and transfer syntax."""

    def __init__(
        self,
        port: int,
        contexts: Sequence[tuple[int, str, Sequence[str]]] = DEFAULT_CONTEXTS,
        calling: str = "RAWSCU",
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(associate_rq(contexts, calling=calling))
        kind, body = read_pdu(self.sock)
        assert kind == 0x02, f"association not accepted (PDU type {kind})"
        self.accepted = ac_contexts(body)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, context_id: int, command: bytes) -> None:
        self.send(p_data(pdv(context_id, 0x03, command)))

    def dataset(self, context_id: int, data: bytes, fragment: int = 16000) -> None:
        """`data` as dataset fragments of `fragment` bytes, one PDU each, the last marked."""
        for start in range(0, max(len(data), 1), fragment):
            control = 0x02 if start + fragment >= len(data) else 0x00
            self.send(p_data(pdv(context_id, control, data[start : start + fragment])))

    def store(
        self,
        raw: bytes,
        sop_instance: str | None,
        *,
        context_id: int = 1,
        sop_class: str | None = CT,
        message_id: int = 1,
    ) -> Dataset:
        self.command(
            context_id,
            request(
                C_STORE, message_id, sop_class=sop_class, sop_instance=sop_instance, dataset=True
            ),
        )
        self.dataset(context_id, raw)
        return self.response()

    def response(self) -> Dataset:
        """The next response command set (decoded); fails on anything else."""
        command = b""
        while True:
            kind, body = read_pdu(self.sock)
            assert kind == 0x04, f"expected P-DATA-TF, got PDU type {kind} {body!r}"
            pos = 0
            while pos < len(body):
                length = struct.unpack_from(">I", body, pos)[0]
                control = body[pos + 5]
                command += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x03 == 0x03:
                    return read_dataset(io.BytesIO(command), True, True)

    def abort_reason(self) -> tuple[int, int]:
        """(source, reason) of the A-ABORT the receiver sends next; fails on anything else."""
        kind, body = read_pdu(self.sock)
        assert kind == 0x07, f"expected A-ABORT, got PDU type {kind}"
        return body[2], body[3]

    def release(self) -> None:
        self.send(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
        kind, _ = read_pdu(self.sock)
        assert kind == 0x06, f"expected A-RELEASE-RP, got PDU type {kind}"
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
