"""Move due series from the tracker to the store stream, and acks back to the spool.

The flusher thread sleeps until the tracker's next deadline, takes the due groups, records
each update's id in the spool (so a restart re-sends the same update), and queues it on the
stream. The acks thread takes the updates the store settled off the client's `settled`
queue and retires their spool entries (ok) or moves them to the dead letters (INVALID):
an entry leaves the spool only once the store has answered for it (contract 1).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid

from seriesflow.receiver import updates
from seriesflow.receiver.client import Pending, StoreClient
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import DeadLetter, Entry, Spool
from seriesflow.receiver.tracker import Flush, Tracker
from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)

_KIND_NAMES = {
    pb.AckError.KIND_UNSPECIFIED: "unspecified",
    pb.AckError.KIND_INVALID: "invalid",
}


class Flusher:
    """Delivery, both ways: series out through `client`, its acks back into `spool`."""

    def __init__(
        self, spool: Spool, tracker: Tracker, client: StoreClient, metrics: ReceiverMetrics
    ) -> None:
        self.spool = spool
        self.tracker = tracker
        self.client = client
        self.metrics = metrics
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)
        self._acks = threading.Thread(target=self._take_acks, name="acks", daemon=True)
        self._recovered: list[Entry] = []
        self.last_progress = time.monotonic()

    def start(self, recovered: list[Entry]) -> None:
        """Open the stream, then re-send or re-track `recovered` and flush from then on."""
        self._recovered = recovered
        self.client.start()
        self._acks.start()
        self._thread.start()

    def stop(self, drain_timeout: float) -> None:
        """Flush no more; give updates in flight `drain_timeout` seconds to be acked, close
        the stream, and return once every ack received has reached the spool."""
        self._stopping.set()
        self.tracker.changed.set()
        self._thread.join(timeout=10)
        self.client.stop(drain_timeout)
        self._acks.join(timeout=10)  # ends at the None the client queues when it is done

    # -- flusher thread -------------------------------------------------------------

    def _run(self) -> None:
        self._recover()
        while not self._stopping.is_set():
            self.last_progress = time.monotonic()
            wait = self.tracker.next_deadline()
            # Wake at the next deadline, when an instance arrives, or at least every second.
            self.tracker.changed.wait(1.0 if wait is None else min(wait + 0.005, 1.0))
            self.tracker.changed.clear()
            for flush in self.tracker.due():
                try:
                    self._flush(flush)
                except Exception:
                    # Never lose the loop: the entries stay in the spool, sent after restart.
                    _log.exception(
                        "flushing a series failed", extra={"fields": {"series": flush.series_uid}}
                    )

    def _recover(self) -> None:
        """Re-send updates that were assigned before a restart; re-track the rest."""
        assigned: dict[str, list[Entry]] = collections.defaultdict(list)
        for entry in self._recovered:
            if entry.update_id is None:
                self.tracker.add(
                    entry.series_uid, entry.seq, None, True, received_wall=entry.received_at
                )
            else:
                assigned[entry.update_id].append(entry)
        if self._recovered:
            _log.info(
                "spool recovered",
                extra={
                    "fields": {
                        "pending_instances": len(self._recovered),
                        "updates_to_resend": len(assigned),
                    }
                },
            )
        self._recovered = []
        for update_id, entries in assigned.items():
            if self._stopping.is_set():
                return
            payloads = self.spool.payloads(e.seq for e in entries)
            update = updates.merge(update_id, payloads, entries[0].completion)
            self._submit(Pending(update, None))

    def _flush(self, flush: Flush) -> None:
        self.metrics.series_flushed.labels(reason=flush.reason.value).inc()
        parts = updates.chunks(flush.seqs)
        for index, seqs in enumerate(parts):
            # Only the last part carries the completion reason; earlier parts are partial.
            last = index == len(parts) - 1
            completion = (
                updates.COMPLETION[flush.reason] if last else pb.COMPLETION_REASON_UNSPECIFIED
            )
            update_id = uuid.uuid4().hex
            self.spool.assign(update_id, completion, seqs)
            update = updates.merge(update_id, self.spool.payloads(seqs), completion)
            _log.debug(
                "series flushed",
                extra={
                    "fields": {
                        "series": flush.series_uid,
                        "reason": flush.reason.value,
                        "instances": len(update.instances),
                        "update_id": update_id,
                    }
                },
            )
            self._submit(Pending(update, flush.last_instance_wall))

    def _submit(self, pending: Pending) -> None:
        while not self.client.submit(pending, timeout=1.0):
            self.last_progress = time.monotonic()  # waiting on the store is progress too
            if self._stopping.is_set():
                return  # stays in the spool, assigned: re-sent at the next start

    # -- acks thread ----------------------------------------------------------------

    def _take_acks(self) -> None:
        while (settled := self.client.settled.get()) is not None:
            try:
                if settled.ack.ok:
                    self._retire(settled.pending, settled.ack)
                else:
                    self._dead_letter(settled.pending, settled.ack)
            except Exception:
                # Never lose the loop: the entries stay in the spool, sent after restart.
                _log.exception(
                    "recording an ack in the spool failed",
                    extra={"fields": {"update_id": settled.ack.update_id}},
                )

    def _retire(self, pending: Pending, ack: pb.SeriesAck) -> None:
        self.spool.retire(ack.update_id)
        if pending.last_instance_wall is not None:
            self.metrics.ack_latency.observe(max(0.0, time.time() - pending.last_instance_wall))

    def _dead_letter(self, pending: Pending, ack: pb.SeriesAck) -> None:
        update = pending.update
        _log.error(
            "store rejected an update as invalid; kept as a dead letter "
            "(list with `seriesflow receiver dead-letters`)",
            extra={
                "fields": {
                    "update_id": update.update_id,
                    "series": update.series.series_instance_uid,
                    "field": ack.error.field,
                    "error": ack.error.message,
                }
            },
        )
        self.spool.dead_letter(
            DeadLetter(
                update_id=update.update_id,
                created_at=time.time(),
                series_uid=update.series.series_instance_uid,
                num_instances=len(update.instances),
                error_kind=_KIND_NAMES.get(ack.error.kind, "unspecified"),
                error_field=ack.error.field,
                error_message=ack.error.message,
                payload=update.SerializeToString(),
            )
        )
        self.metrics.dead_letters.inc()
