"""The DICOM Storage SCP: pynetdicom AE, presentation contexts, and one handler per event.

Handlers are bound with their dependencies (`(evt.EVT_C_STORE, handle_store, [deps])`) and
never raise: every failure becomes a C-STORE status with an ErrorComment, so one bad
instance costs its sender one error and nothing else (contract 4).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from . import header, metrics
from .header import OUT_OF_RESOURCES, SUCCESS, Rejection
from .spool import Spool, SpoolFull, SpoolUnavailable
from .tracker import Tracker

LOG = logging.getLogger(__name__)

# Every transfer syntax is accepted as sent; pixel data is never decoded, so compressed
# syntaxes cost nothing to support.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still sent)
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE lossless
]

_STATUS_LABEL = {SUCCESS: "success", OUT_OF_RESOURCES: "out_of_resources"}


@dataclasses.dataclass
class ScpDeps:
    """What the handlers need; one instance shared by every association."""

    spool: Spool
    tracker: Tracker
    ae_title: str
    receiver_id: str
    open_associations: set[int] = dataclasses.field(default_factory=set)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def build_ae(ae_title: str, max_associations: int, timeouts: tuple[float, float, float]) -> AE:
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:4])
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
    deps: ScpDeps,
    allowed_calling: frozenset[str],
    ssl_context: ssl.SSLContext | None,
) -> ThreadedAssociationServer:
    """Start listening; returns the running server (its socket tells the bound port)."""
    ae.require_calling_aet = sorted(allowed_calling)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [deps]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_ESTABLISHED, handle_established, [deps]),
        (evt.EVT_REJECTED, handle_rejected, [deps]),
        (evt.EVT_RELEASED, handle_ended, [deps, True]),
        (evt.EVT_ABORTED, handle_ended, [deps, False]),
        (evt.EVT_CONN_CLOSE, handle_ended, [deps, False]),
    ]
    server = ae.start_server(
        (host, port), block=False, evt_handlers=handlers, ssl_context=ssl_context
    )
    assert server is not None
    return server


# -- handlers ------------------------------------------------------------------------


def handle_conn_open(event: evt.Event) -> None:
    # Without TCP_NODELAY our small C-STORE responses wait for the sender's delayed ACK
    # (~40 ms each) when the sender leaves Nagle on, as Debian's dcmtk does by default.
    try:
        raw = event.assoc.dul.socket.socket  # type: ignore[union-attr]
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def handle_established(event: evt.Event, deps: ScpDeps) -> None:
    with deps.lock:
        deps.open_associations.add(id(event.assoc))
    metrics.ASSOCIATIONS.labels(result="accepted").inc()
    metrics.ASSOCIATIONS_ACTIVE.inc()


def handle_rejected(event: evt.Event, deps: ScpDeps) -> None:
    metrics.ASSOCIATIONS.labels(result="rejected").inc()
    requestor = event.assoc.requestor
    LOG.warning(
        "association rejected (calling AE title not allowed, or too many associations)",
        extra={
            "fields": {
                "calling_ae_title": str(requestor.ae_title).strip(),
                "peer": f"{requestor.address}:{requestor.port}",
            }
        },
    )


def handle_ended(event: evt.Event, deps: ScpDeps, released: bool) -> None:
    key = id(event.assoc)
    with deps.lock:
        if key not in deps.open_associations:
            return  # already ended (RELEASED then CONN_CLOSE), or never established
        deps.open_associations.discard(key)
    metrics.ASSOCIATIONS_ACTIVE.dec()
    deps.tracker.association_ended(key, released)


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, deps: ScpDeps) -> Dataset | int:
    """Parse, validate, spool durably, then (only then) answer success."""
    try:
        return _store(event, deps)
    except Exception:  # the last line of defence: a bug must not kill the association
        LOG.exception("unexpected error storing an instance")
        return _failure(Rejection(0xC000, "internal_error", "internal error in the receiver"))


def _store(event: evt.Event, deps: ScpDeps) -> Dataset | int:
    stream = event.request.DataSet  # type: ignore[union-attr]
    raw = stream.getvalue() if stream is not None else b""
    metrics.RECEIVED_BYTES.inc(len(raw))
    received = time.time()
    try:
        parsed = header.parse(raw, str(event.context.transfer_syntax))
        # The negotiated class is valid by construction; a dataset's own SOPClassUID may
        # not be, and the store would refuse the whole series' update for it.
        parsed.fallback_sop_class_uid = str(event.request.AffectedSOPClassUID or "")
        representative = deps.tracker.needs_representative(parsed.series_uid)
        record = header.build_record(
            parsed,
            received_at=_timestamp(received),
            calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
            called_ae_title=deps.ae_title,
            receiver_id=deps.receiver_id,
            representative=False,
        )
    except Rejection as rejection:
        return _failure(rejection)
    except Exception as exc:  # values pydicom cannot convert (hostile bytes)
        return _failure(Rejection(0xC000, "unparseable", f"dataset cannot be parsed: {exc}"[:200]))
    if representative:
        try:
            record.representative_header_json = header.representative_json(parsed)
            record.text_decoding_fallbacks[:] = sorted(parsed.fallbacks)
        except Exception:
            # Some element would not render as JSON: keep the instance, use another
            # instance of the series as the representative.
            representative = False
    try:
        seq = deps.spool.append(parsed.series_uid, record.SerializeToString(), received)
    except SpoolFull as exc:
        return _failure(Rejection(OUT_OF_RESOURCES, "spool_full", f"receiver spool full: {exc}"))
    except SpoolUnavailable as exc:
        return _failure(Rejection(OUT_OF_RESOURCES, "spool_unavailable", str(exc)))
    deps.tracker.add(parsed.series_uid, seq, id(event.assoc), representative, received)
    metrics.INSTANCES.labels(status="success", reason="stored").inc()
    return SUCCESS


def _failure(rejection: Rejection) -> Dataset:
    status_label = _STATUS_LABEL.get(rejection.status, "error")
    metrics.INSTANCES.labels(status=status_label, reason=rejection.reason).inc()
    fields = {"status": f"0x{rejection.status:04X}", "reason": rejection.reason}
    if rejection.reason in {"missing_uid", "malformed_uid", "spool_full", "spool_unavailable"}:
        fields["comment"] = rejection.comment  # fixed texts; parser messages may quote values
    LOG.info("instance refused", extra={"fields": fields})
    answer = Dataset()
    answer.Status = rejection.status
    # ErrorComment is LO: at most 64 characters.
    answer.ErrorComment = rejection.comment[:64]
    return answer


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
