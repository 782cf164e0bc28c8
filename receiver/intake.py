"""One received instance, from dataset bytes to a durable spool entry and a DICOM status.

Called by the DICOM engine (receiver.server) for every C-STORE. Never raises: every
failure becomes a status with an ErrorComment, so one bad instance costs its sender one
error and nothing else (contract 4). Success is answered only after the spool committed
the instance (contract 1).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Literal

from seriesflow.receiver import header, record
from seriesflow.receiver.header import HeaderError, HeaderReason
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import Spool, SpoolError, SpoolFull
from seriesflow.receiver.tracker import Tracker

_log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3). 0xA7xx tells the sender to retry later; 0xA9xx/0xCxxx not.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

# Why an instance is refused: what its header lacks, or what stopped the intake. A fixed
# set, since it is the `reason` label of the instances counter.
Refusal = Literal[HeaderReason, "spool_full", "spool_unavailable", "internal_error"]

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
}

_STATUS_LABEL = {SUCCESS: "success", OUT_OF_RESOURCES: "out_of_resources"}
# Comments we write ourselves; parser messages may quote values and stay out of INFO logs.
_LOGGABLE_REASONS: frozenset[Refusal] = frozenset(
    {"missing_uid", "malformed_uid", "spool_full", "spool_unavailable"}
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

    def accept(
        self,
        raw: bytes,
        transfer_syntax_uid: str,
        calling_ae_title: str,
        association: int,
        affected_sop_class_uid: str,
    ) -> Answer:
        """Parse, validate, spool durably, then (only then) answer success. Blocks."""
        step = self.begin(
            raw, transfer_syntax_uid, calling_ae_title, association, affected_sop_class_uid
        )
        if isinstance(step, Answer):
            return step
        concurrent.futures.wait([step.committed])
        return step.complete()

    def begin(
        self,
        raw: bytes,
        transfer_syntax_uid: str,
        calling_ae_title: str,
        association: int,
        affected_sop_class_uid: str,
    ) -> Answer | Committing:
        """Parse and queue for the spool without waiting: an Answer when refused at once,
        else a Committing whose `committed` future completes with the group commit."""
        try:
            return self._begin(
                raw, transfer_syntax_uid, calling_ae_title, association, affected_sop_class_uid
            )
        except Exception:  # the last line of defence: a bug must not end the association
            _log.exception("unexpected error storing an instance")
            return _refuse(self.metrics, "internal_error", "internal error")

    def _begin(
        self, raw: bytes, syntax: str, calling: str, association: int, sop_class: str
    ) -> Answer | Committing:
        self.metrics.received_bytes.inc(len(raw))
        received = time.time()
        try:
            parsed = header.parse(raw, syntax)
            spooled = record.build(
                parsed,
                received_at=received,
                negotiated_sop_class_uid=sop_class,
                calling_ae_title=calling,
                called_ae_title=self.ae_title,
                receiver_id=self.receiver_id,
                # The first instance of each series group carries the full header.
                representative=self.tracker.needs_representative(parsed.series_uid),
            )
        except HeaderError as error:
            return _refuse(self.metrics, error.reason, error.comment)
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
        )


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

    def complete(self) -> Answer:
        try:
            seq = self.committed.result()
        except SpoolError as exc:
            return _spool_refusal(self.metrics, exc)
        self.tracker.add(self.series_uid, seq, self.association, self.representative, self.received)
        self.metrics.instances.labels(status="success", reason="stored").inc()
        return Answer(SUCCESS)


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
