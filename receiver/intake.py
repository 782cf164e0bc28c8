"""One received instance, from its dataset file to a durable spool entry and a DICOM status.

Called by the DICOM engine (receiver.server) for every C-STORE, once the dataset has
streamed into a file (receiver.incoming). Never raises: every
failure becomes a status with an ErrorComment, so one bad instance costs its sender one
error and nothing else (contract 4). Success is answered only after the spool committed
the instance (contract 1).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from typing import Literal

from seriesflow.receiver import header, record
from seriesflow.receiver.header import HeaderError, HeaderReason
from seriesflow.receiver.incoming import Incoming, IncomingFile
from seriesflow.receiver.kept import KeptFiles
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import Spool, SpoolError, SpoolFull
from seriesflow.receiver.tracker import Tracker

_log = logging.getLogger(__name__)
# The instance intake is reading on this thread or task, for PydicomContext.
_reading: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "seriesflow_instance_being_read", default=None
)

# C-STORE statuses (PS3.4 B.2.3). 0xA7xx tells the sender to retry later; 0xA9xx/0xCxxx not.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
# In the 0xCxxx "error" range (PS3.4 B.2.3), the low bits ours to choose: one code for
# "the receiver's size limit", so a sender's log tells it from a dataset it cannot parse.
INSTANCE_TOO_LARGE = 0xC001

# Why an instance is refused: what its header lacks, or what stopped the intake. A fixed
# set, since it is the `reason` label of the instances counter.
Refusal = Literal[
    HeaderReason,
    "command_mismatch",
    "too_large",
    "spool_full",
    "spool_unavailable",
    "internal_error",
]

# The one place a refusal becomes the status its sender gets (tests/receiver/test_intake.py
# checks that every reason has one).
REFUSAL_STATUS: dict[Refusal, int] = {
    "missing_uid": DATASET_DOES_NOT_MATCH,
    "malformed_uid": DATASET_DOES_NOT_MATCH,
    "unparseable": CANNOT_UNDERSTAND,
    # A full or failing spool is temporary: the sender should retry, not give up.
    "spool_full": OUT_OF_RESOURCES,
    "spool_unavailable": OUT_OF_RESOURCES,
    "internal_error": CANNOT_UNDERSTAND,
    # The dataset is not what its C-STORE-RQ announced (UIDs differ or are missing).
    "command_mismatch": DATASET_DOES_NOT_MATCH,
    # Over SERIESFLOW_MAX_INSTANCE_BYTES. Not 0xA7xx (out of resources): that tells the
    # sender to retry later, and the same instance would be refused again, forever. An
    # error status makes it give up on this instance (and say why) while the rest goes on.
    "too_large": INSTANCE_TOO_LARGE,
}

_STATUS_LABEL = {SUCCESS: "success", OUT_OF_RESOURCES: "out_of_resources"}
# Comments we write ourselves; parser messages may quote values and stay out of INFO logs.
_LOGGABLE_REASONS: frozenset[Refusal] = frozenset(
    {
        "missing_uid",
        "malformed_uid",
        "command_mismatch",
        "too_large",
        "spool_full",
        "spool_unavailable",
    }
)


@dataclasses.dataclass(frozen=True)
class Answer:
    """The C-STORE response: status, and an ErrorComment (LO, at most 64 characters)."""

    status: int
    comment: str = ""


@dataclasses.dataclass
class Intake:
    spool: Spool
    tracker: Tracker
    metrics: ReceiverMetrics
    ae_title: str
    receiver_id: str
    incoming: Incoming
    kept: KeptFiles | None = None  # where accepted instances' files wait for their flush
    _open: set[int] = dataclasses.field(default_factory=set)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    # -- associations -------------------------------------------------------------------

    def association_opened(self, key: int) -> None:
        with self._lock:
            self._open.add(key)
        self.metrics.associations.labels(result="accepted").inc()
        self.metrics.associations_active.inc()

    def association_ended(self, key: int, released: bool) -> None:
        """Idempotent: engines may report one ending twice (release, then close)."""
        with self._lock:
            if key not in self._open:
                return
            self._open.discard(key)
        self.metrics.associations_active.dec()
        self.tracker.association_ended(key, released)

    def association_rejected(
        self, calling_ae_title: str, called_ae_title: str, peer: str, why: str
    ) -> None:
        self.metrics.associations.labels(result="rejected").inc()
        fields = {"calling_ae_title": calling_ae_title, "called_ae_title": called_ae_title}
        _log.warning("association rejected", extra={"fields": {**fields, "peer": peer, "why": why}})

    # -- instances ----------------------------------------------------------------------

    def begin(
        self,
        instance: IncomingFile,
        calling_ae_title: str,
        association: int,
        command: StoreCommand,
    ) -> Answer | Committing:
        """Parse the finished `instance` file and queue it for the spool without waiting:
        an Answer when refused at once, else a Committing whose `committed` future
        completes with the group commit. The caller discards the file afterwards."""
        # pydicom's own log lines while this instance is read say which instance it was.
        token = _reading.set(
            {"sop_instance_uid": command.sop_instance_uid, "calling_ae_title": calling_ae_title}
        )
        try:
            return self._begin(instance, calling_ae_title, association, command)
        except Exception:  # the last line of defence: a bug must not end the association
            _log.exception("unexpected error storing an instance")
            return _refuse(self.metrics, "internal_error", "internal error")
        finally:
            _reading.reset(token)

    def _begin(
        self, instance: IncomingFile, calling: str, association: int, command: StoreCommand
    ) -> Answer | Committing:
        self.metrics.received_bytes.inc(instance.received_bytes)
        received = time.time()
        if instance.too_large:
            limit = _size_text(instance.max_bytes)
            return _refuse(self.metrics, "too_large", f"instance larger than the limit of {limit}")
        if instance.write_error:
            # The spool's volume (full disk, I/O error): not ready until a commit works again.
            self.spool.write_failed(OSError(instance.write_error))
            return _refuse(self.metrics, "spool_unavailable", instance.write_error)
        if instance.inflate_error:
            return _refuse(self.metrics, "unparseable", instance.inflate_error)
        try:
            parsed = header.parse_file(
                instance.path, instance.transfer_syntax_uid, instance.received_bytes
            )
            mismatch = _command_mismatch(parsed, command)
            if mismatch:
                return _refuse(self.metrics, "command_mismatch", mismatch)
            spooled = record.build(
                parsed,
                received_at=received,
                negotiated_sop_class_uid=command.sop_class_uid,
                calling_ae_title=calling,
                called_ae_title=self.ae_title,
                receiver_id=self.receiver_id,
                # The first instance of each series group carries the full header.
                representative=self.tracker.needs_representative(parsed.series_uid),
            )
        except HeaderError as error:
            return _refuse(self.metrics, error.reason, error.comment)
        if spooled.ByteSize() > record.MAX_RECORD_BYTES:
            limit = _size_text(record.MAX_RECORD_BYTES)
            return _refuse(self.metrics, "too_large", f"text too large to deliver (over {limit})")
        try:
            future = self.spool.append_later(
                parsed.series_uid, spooled.SerializeToString(), received
            )
        except SpoolError as exc:
            return _spool_refusal(self.metrics, exc)
        # Asked for but not rendered, the header is left to a later instance of the series.
        representative = bool(spooled.representative_header_json)
        return Committing(
            self.tracker,
            self.metrics,
            future,
            parsed.series_uid,
            association,
            representative,
            received,
            calling,
            instance if self.kept is not None else None,
            self.kept,
        )


class PydicomContext(logging.Filter):
    """Adds the instance being read to pydicom's own log lines (it logs to one logger,
    "pydicom"): "Error while processing tag 00101010" alone says nothing an operator can
    act on. Its messages name tags and file positions, never values, and only the
    command's SOP Instance UID and the calling AE title are added: no patient data."""

    def filter(self, record: logging.LogRecord) -> bool:
        reading = _reading.get()
        if reading is not None:
            fields = getattr(record, "fields", None)
            record.fields = {**(fields if isinstance(fields, dict) else {}), **reading}
        return True


def tag_pydicom_logs() -> None:
    """Install PydicomContext on pydicom's logger, once (idempotent)."""
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, PydicomContext) for f in logger.filters):
        logger.addFilter(PydicomContext())


@dataclasses.dataclass(frozen=True)
class StoreCommand:
    """What a C-STORE-RQ says of its dataset: (0000,0002) and (0000,1000), as sent."""

    sop_class_uid: str
    sop_instance_uid: str


def _command_mismatch(parsed: header.ParsedHeader, command: StoreCommand) -> str:
    """Why the dataset is not the instance its command announced; empty when it is.

    PS3.7 9.3.1.1: the command's AffectedSOPClassUID and AffectedSOPInstanceUID name the
    instance; a dataset that differs would be stored under a UID its sender never
    acknowledged, so it is refused (0xA900, as dcmtk's storescp does)."""
    if not command.sop_instance_uid:
        return "command has no AffectedSOPInstanceUID"
    if not command.sop_class_uid:
        return "command has no AffectedSOPClassUID"
    if parsed.sop_instance_uid != command.sop_instance_uid:
        return "SOPInstanceUID differs from the command's AffectedSOPInstanceUID"
    dataset_class = header.text(parsed, "SOPClassUID").strip()
    if not dataset_class:
        return "SOPClassUID is missing"
    if dataset_class != command.sop_class_uid:
        return "SOPClassUID differs from the command's AffectedSOPClassUID"
    return ""


@dataclasses.dataclass
class Committing:
    """An instance on its way into the spool; `complete()` once `committed` is done."""

    tracker: Tracker
    metrics: ReceiverMetrics
    committed: concurrent.futures.Future[int]
    series_uid: str
    association: int
    representative: bool
    received: float
    calling: str  # the sender's AE title: the tracker learns each sender's pauses
    instance: IncomingFile | None = None
    kept: KeptFiles | None = None

    def complete(self) -> Answer:
        try:
            seq = self.committed.result()
        except SpoolError as exc:
            return _spool_refusal(self.metrics, exc)
        if self.instance is not None and self.kept is not None:
            # The file may represent the series (receiver.previews); without it the series
            # takes another instance's header, so a failed move costs nothing else.
            with contextlib.suppress(OSError):
                self.instance.keep(self.kept.path(seq))
        self.tracker.add(
            self.series_uid,
            seq,
            self.association,
            self.representative,
            self.received,
            sender=self.calling,
        )
        self.metrics.instances.labels(status="success", reason="stored").inc()
        return Answer(SUCCESS)


def _size_text(nbytes: int) -> str:
    """2 GiB, 512 MiB or 1000 bytes: how SERIESFLOW_MAX_INSTANCE_BYTES is usually written."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size and nbytes % size == 0:
            return f"{nbytes // size} {unit}"
    return f"{nbytes} bytes"


def _spool_refusal(metrics: ReceiverMetrics, exc: SpoolError) -> Answer:
    if isinstance(exc, SpoolFull):
        return _refuse(metrics, "spool_full", f"spool full: {exc}")
    return _refuse(metrics, "spool_unavailable", str(exc))


def _refuse(metrics: ReceiverMetrics, reason: Refusal, comment: str) -> Answer:
    status = REFUSAL_STATUS[reason]
    metrics.instances.labels(status=_STATUS_LABEL.get(status, "error"), reason=reason).inc()
    fields = {"status": f"0x{status:04X}", "reason": reason}
    if reason in _LOGGABLE_REASONS:
        fields["comment"] = comment
    _log.info("instance refused", extra={"fields": fields})
    return Answer(status, comment[:64])
