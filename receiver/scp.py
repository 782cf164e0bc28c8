"""The alternative DICOM engine (SERIESFLOW_DICOM_ENGINE=pynetdicom): a pynetdicom AE.

The default engine is receiver.server (asyncio): pynetdicom's polling threads capped one
sender near 250 instances/s here. This one stays for peers that need pynetdicom's fuller
protocol support; both hand every instance to the same Intake.

Handlers are bound with their dependencies (`(evt.EVT_C_STORE, handle_store, [intake])`) and
never raise: every failure becomes a C-STORE status with an ErrorComment, so one bad
instance costs its sender one error and nothing else (contract 4).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from seriesflow.receiver.admission import Admission
from seriesflow.receiver.contexts import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    UNCOMPRESSED,
    VERIFICATION,
)
from seriesflow.receiver.intake import SUCCESS, Intake


def build_ae(ae_title: str, max_associations: int, timeouts: tuple[float, float, float]) -> AE:
    ae = AE(ae_title=ae_title)
    for sop_class in sorted(STORAGE_SOP_CLASSES):
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(VERIFICATION, list(UNCOMPRESSED))
    ae.maximum_associations = max_associations
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = timeouts
    # Bigger PDUs mean fewer fragments and fewer trips through pynetdicom's loops.
    ae.maximum_pdu_size = 0  # 0 = unlimited: the sender's own limit applies
    return ae


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context


def start(
    ae: AE,
    host: str,
    port: int,
    intake: Intake,
    admission: Admission,
    ssl_context: ssl.SSLContext | None,
) -> ThreadedAssociationServer:
    """Start listening; returns the running server (its socket tells the bound port)."""
    # pynetdicom applies the same two checks as Admission.refusal, with the same reasons.
    ae.require_calling_aet = sorted(admission.allowed_calling)
    ae.require_called_aet = admission.require_called
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [intake]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_ESTABLISHED, handle_established, [intake]),
        (evt.EVT_REJECTED, handle_rejected, [intake, admission]),
        (evt.EVT_RELEASED, handle_ended, [intake, True]),
        (evt.EVT_ABORTED, handle_ended, [intake, False]),
        (evt.EVT_CONN_CLOSE, handle_ended, [intake, False]),
    ]
    server = ae.start_server(
        (host, port), block=False, evt_handlers=handlers, ssl_context=ssl_context
    )
    assert server is not None
    return server


# -- handlers: pynetdicom events -> Intake -------------------------------------------------


def handle_conn_open(event: evt.Event) -> None:
    # Without TCP_NODELAY our small C-STORE responses wait for the sender's delayed ACK
    # (~40 ms each) when the sender leaves Nagle on, as Debian's dcmtk does by default.
    try:
        raw = event.assoc.dul.socket.socket  # type: ignore[union-attr]
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def handle_established(event: evt.Event, intake: Intake) -> None:
    intake.association_opened(id(event.assoc))


def handle_rejected(event: evt.Event, intake: Intake, admission: Admission) -> None:
    requestor = event.assoc.requestor
    calling = str(requestor.ae_title).strip()
    primitive = requestor.primitive
    called = str(primitive.called_ae_title if primitive is not None else "").strip()
    # pynetdicom does not say why it rejected; asking Admission again tells the same answer.
    refusal = admission.refusal(calling, called)
    why = refusal[1] if refusal is not None else "too many associations"
    intake.association_rejected(calling, called, f"{requestor.address}:{requestor.port}", why)


def handle_ended(event: evt.Event, intake: Intake, released: bool) -> None:
    intake.association_ended(id(event.assoc), released)


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, intake: Intake) -> Dataset:
    request = event.request
    stream = request.DataSet  # type: ignore[union-attr]
    answer = intake.accept(
        stream.getvalue() if stream is not None else b"",
        str(event.context.transfer_syntax),
        str(event.assoc.requestor.ae_title).strip(),
        id(event.assoc),
        str(request.AffectedSOPClassUID or ""),
    )
    response = Dataset()
    response.Status = answer.status
    if answer.comment:
        response.ErrorComment = answer.comment
    return response
