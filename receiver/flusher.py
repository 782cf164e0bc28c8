"""Move due series from the tracker to the store stream, and acks back to the spool.

The flusher thread sleeps until the tracker's next deadline, takes the due groups, records
each update's id in the spool (so a restart re-sends the same update), and queues it on the
stream. The acks thread takes the updates the store settled off the client's `settled`
queue and retires their spool entries (ok) or moves them to the dead letters (INVALID):
an entry leaves the spool only once the store has answered for it (contract 1).

Every series group the tracker opens is also reported to the store as a hold (and renewed
while it stays open, every third of the hold time the store's acks announce), so the store,
which decides completion across all receivers, waits for this one (contract 3). Holds are
not spooled: after a restart the recovered groups are reported again.

A step whose spool write fails (a full disk, an I/O error: after the instances were
acknowledged) is never dropped: assigning a series to an update, re-sending an update
recovered at start, retiring acked entries and keeping a rejected update aside are each
held and tried again with backoff until the spool takes them, so delivery resumes by itself
once space returns. Re-sending is safe: the store's merge is idempotent (contract 2).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from seriesflow.receiver import header, record, representative, updates
from seriesflow.receiver.client import Pending, StoreClient
from seriesflow.receiver.held import SPOOL_FAILURES, Attempt, HeldSteps
from seriesflow.receiver.kept import KeptFiles
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import DeadLetter, Entry, PreviewJob, Spool
from seriesflow.receiver.tracker import Flush, Hold, Tracker
from seriesflow.v1 import series_store_pb2 as pb

if TYPE_CHECKING:  # only with previews on does the receiver load the renderer
    from seriesflow.receiver.previews import Previewer

_log = logging.getLogger(__name__)

# Renewal interval of holds until the store's first ack says how long a hold lasts (a third
# of its default SERIESFLOW_HOLD_TIMEOUT).
_RENEW_AFTER = 100.0

_KIND_NAMES = {
    pb.AckError.KIND_UNSPECIFIED: "unspecified",
    pb.AckError.KIND_INVALID: "invalid",
}


@dataclasses.dataclass
class _Part:
    """One update of a flushed series; `update_id` is set once the spool recorded it."""

    series_uid: str
    seqs: list[int]
    completion: int
    last_instance_wall: float | None
    update_id: str | None = None
    # The group's representative (its middle instance): header JSON and SOP UID, carried by
    # the group's last part. None: the header of the records (their first instance's).
    representative: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class _Representative:
    seq: int
    sop_instance_uid: str
    transfer_syntax_uid: str
    header_json: str


class Flusher:
    """Delivery, both ways: series out through `client`, its acks back into `spool`."""

    def __init__(
        self,
        spool: Spool,
        tracker: Tracker,
        client: StoreClient,
        metrics: ReceiverMetrics,
        receiver_id: str = "",
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        kept: KeptFiles | None = None,
        previewer: Previewer | None = None,
    ) -> None:
        self.spool = spool
        self.receiver_id = receiver_id
        self.kept = kept
        self.previewer = previewer
        self.renew_after = _RENEW_AFTER
        self.tracker = tracker
        self.client = client
        self.metrics = metrics
        self.held = HeldSteps(metrics, tracker.changed.set, backoff_initial, backoff_max)
        self._probe_interval = backoff_max
        self._next_probe = 0.0
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
        if held := len(self.held):
            _log.warning(
                "stopping with delivery steps the spool could not record; their entries "
                "stay in the spool and are sent at the next start",
                extra={"fields": {"held_steps": held}},
            )

    # -- flusher thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._recover()
        except Exception:
            _log.exception("re-sending recovered updates failed; they are sent at next start")
        while not self._stopping.is_set():
            self.last_progress = time.monotonic()
            waits = [w for w in (self.tracker.next_deadline(), self.held.wait()) if w is not None]
            # Wake at the next deadline or retry, when an instance arrives, or every second.
            self.tracker.changed.wait(min([w + 0.005 for w in waits] + [1.0]))
            self.tracker.changed.clear()
            self.held.run_due(self._stopping)
            self._probe_if_failing()
            # Holds first: a group's hold must reach the stream before its flush does.
            for hold in self.tracker.holds_due(self.renew_after):
                self._report_hold(hold)
            for flush in self.tracker.due():
                try:
                    self._flush(flush)
                except Exception:
                    # Never lose the loop: the entries stay in the spool, sent after restart.
                    _log.exception(
                        "flushing a series failed", extra={"fields": {"series": flush.series_uid}}
                    )

    def _probe_if_failing(self) -> None:
        """While the spool fails with nothing held to retry, write a probe now and then."""
        now = time.monotonic()
        if self.spool.last_commit_ok or len(self.held) or now < self._next_probe:
            return
        self._next_probe = now + self._probe_interval
        self.spool.probe()

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
        parts = [
            _Part(entries[0].series_uid, [e.seq for e in entries], entries[0].completion, None, uid)
            for uid, entries in assigned.items()
        ]
        self._send("resend", parts)

    def submit_report(self, update: pb.SeriesUpdate) -> None:
        """Queue a report that is in no spool entry (a preview) behind the updates."""
        self._submit(Pending(update, None))

    def _report_hold(self, hold: Hold) -> None:
        update = pb.SeriesUpdate(
            update_id=uuid.uuid4().hex,
            holding=True,
            series=pb.SeriesAttributes(series_instance_uid=hold.series_uid),
            source=pb.Source(receiver_id=self.receiver_id),
            receiver_sequence=hold.first_seq,
        )
        self.metrics.hold_reports.inc()
        self._submit(Pending(update, None))

    def _flush(self, flush: Flush) -> None:
        self.metrics.series_flushed.labels(reason=flush.reason.value).inc()
        chosen = self._representative(flush)
        chunks = updates.chunks(flush.seqs)
        parts = [
            # Only the last part carries the completion reason; earlier parts are partial.
            _Part(
                flush.series_uid,
                seqs,
                updates.COMPLETION[flush.reason]
                if index == len(chunks) - 1
                else pb.COMPLETION_REASON_UNSPECIFIED,
                flush.last_instance_wall,
            )
            for index, seqs in enumerate(chunks)
        ]
        if chosen is not None and chosen.header_json:
            parts[-1].representative = (chosen.header_json, chosen.sop_instance_uid)
        _log.debug(
            "series flushed",
            extra={
                "fields": {
                    "series": flush.series_uid,
                    "reason": flush.reason.value,
                    "instances": len(flush.seqs),
                }
            },
        )
        self._send("assign", parts)
        self._schedule_preview(flush, chosen)

    def _representative(self, flush: Flush) -> _Representative | None:
        """The group's middle instance among those whose file was kept, with its header."""
        if self.kept is None:
            return None
        found = {}
        for seq, payload in self.spool.records(flush.seqs).items():
            instances = pb.SeriesUpdate.FromString(payload).instances
            if instances:
                found[seq] = instances[0]
        available = [seq for seq in found if self.kept.has(seq)]
        if not available:
            return None
        seq = representative.middle(found, available)
        instance = found[seq]
        try:
            parsed = header.parse_file(
                self.kept.path(seq), instance.transfer_syntax_uid, instance.size_bytes
            )
            header_json = record.representative_header(parsed)
        except (header.HeaderError, OSError):
            header_json = ""
        return _Representative(
            seq, instance.sop_instance_uid, instance.transfer_syntax_uid, header_json
        )

    def _schedule_preview(self, flush: Flush, chosen: _Representative | None) -> None:
        """Keep the representative's file for its preview; delete the group's others."""
        if self.kept is None:
            return
        keep = None
        if chosen is not None and self.previewer is not None:
            keep = chosen.seq
            self._record_preview(
                PreviewJob(
                    chosen.seq,
                    flush.series_uid,
                    chosen.sop_instance_uid,
                    chosen.transfer_syntax_uid,
                    time.time(),
                )
            )
        self.kept.drop(seq for seq in flush.seqs if seq != keep)

    def _record_preview(self, job: PreviewJob) -> None:
        """Record the job in the spool, then queue it; a write the spool fails is held and
        retried like the group's assignment (its file is kept meanwhile)."""
        previewer = self.previewer
        assert previewer is not None

        def record() -> None:
            self.spool.add_preview_job(job)
            previewer.schedule(job)

        if len(self.held):
            self.held.hold("assign", [record], None)
            return
        try:
            record()
        except SPOOL_FAILURES as exc:
            self.held.hold("assign", [record], exc)

    def _send(self, step: str, parts: list[_Part]) -> None:
        """Send each part; from the first the spool fails on, hold the rest for retry.
        While steps are held the spool is failing: new parts queue behind them, in order,
        and go at the next retry round rather than each failing a commit of its own."""
        if len(self.held):
            self.held.hold(step, [self._attempt(part) for part in parts], None)
            return
        for index, part in enumerate(parts):
            if self._stopping.is_set():
                return  # what is left is in the spool, sent at the next start
            try:
                self._send_part(part)
            except SPOOL_FAILURES as exc:
                self.held.hold(step, [self._attempt(p) for p in parts[index:]], exc)
                return

    def _attempt(self, part: _Part) -> Attempt:
        return lambda: self._send_part(part)

    def _send_part(self, part: _Part) -> None:
        """Record the part's update id in the spool (once), then queue the update."""
        if part.update_id is None:
            update_id = uuid.uuid4().hex
            self.spool.assign(update_id, part.completion, part.seqs)
            part.update_id = update_id  # a retry after this point re-sends the same update
        payloads = self.spool.payloads(part.seqs)
        if not payloads:
            _log.warning(
                "an update's entries are no longer in the spool; nothing to send",
                extra={"fields": {"series": part.series_uid, "update_id": part.update_id}},
            )
            return
        update = updates.merge(part.update_id, payloads, part.completion)
        update.receiver_sequence = max(part.seqs)
        if part.representative is not None:
            update.representative_header_json, update.representative_sop_instance_uid = (
                part.representative
            )
        if (size := update.ByteSize()) > updates.STORE_MESSAGE_LIMIT:
            # Intake refuses instances whose record could grow this large; a spool written
            # before that check could still hold one. Sending it would break the stream at
            # every re-send, so it is kept aside as the store would keep an invalid one.
            self._dead_letter(Pending(update, part.last_instance_wall), _too_large(size))
            return
        self._submit(Pending(update, part.last_instance_wall))

    def _submit(self, pending: Pending) -> None:
        while not self.client.submit(pending, timeout=1.0):
            self.last_progress = time.monotonic()  # waiting on the store is progress too
            if self._stopping.is_set():
                return  # stays in the spool, assigned: re-sent at the next start

    # -- acks thread ----------------------------------------------------------------

    def _take_acks(self) -> None:
        while (settled := self.client.settled.get()) is not None:
            try:
                if settled.pending.update.holding:
                    self._hold_settled(settled.ack)
                elif settled.pending.update.HasField("preview"):
                    if self.previewer is not None:
                        self.previewer.settled(settled.ack.update_id, settled.ack.ok)
                elif settled.ack.ok:
                    self._retire(settled.pending, settled.ack)
                else:
                    self._dead_letter(settled.pending, settled.ack)
            except Exception:
                # Never lose the loop: the entries stay in the spool, sent after restart.
                _log.exception(
                    "recording an ack in the spool failed",
                    extra={"fields": {"update_id": settled.ack.update_id}},
                )

    def _hold_settled(self, ack: pb.SeriesAck) -> None:
        """A hold is in no spool entry: its ack only tells how often to renew holds."""
        if ack.ok:
            if ack.hold_seconds > 0:
                self.renew_after = max(1.0, ack.hold_seconds / 3)
            return
        _log.warning(
            "store refused a hold report; the series may complete before this receiver "
            "has flushed it (a later instance then reopens it)",
            extra={"fields": {"field": ack.error.field, "error": ack.error.message}},
        )

    def _retire(self, pending: Pending, ack: pb.SeriesAck) -> None:
        if pending.last_instance_wall is not None:
            self.metrics.ack_latency.observe(max(0.0, time.time() - pending.last_instance_wall))
        update_id = ack.update_id

        def retire_again() -> None:
            self.spool.retire(update_id).result()

        def hold_if_failed(retired: concurrent.futures.Future[None]) -> None:
            # The writer thread calls this; holding only queues, it never waits on the spool.
            if (error := retired.exception()) is not None:
                self.held.hold("retire", [retire_again], error)

        # Not waited for, so acks share group commits; a failed delete is retried alone.
        self.spool.retire(update_id).add_done_callback(hold_if_failed)

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
        letter = DeadLetter(
            update_id=update.update_id,
            created_at=time.time(),
            series_uid=update.series.series_instance_uid,
            num_instances=len(update.instances),
            error_kind=_KIND_NAMES.get(ack.error.kind, "unspecified"),
            error_field=ack.error.field,
            error_message=ack.error.message,
            payload=update.SerializeToString(),
        )

        def keep_aside() -> None:
            self.spool.dead_letter(letter)
            self.metrics.dead_letters.inc()

        try:
            keep_aside()
        except SPOOL_FAILURES as exc:
            self.held.hold("dead_letter", [keep_aside], exc)


def _too_large(size: int) -> pb.SeriesAck:
    """The rejection the store would send if it could receive an update of `size` bytes."""
    limit = updates.STORE_MESSAGE_LIMIT
    return pb.SeriesAck(
        ok=False,
        error=pb.AckError(
            kind=pb.AckError.KIND_INVALID,
            message=f"update of {size} bytes is larger than the store accepts ({limit} bytes); "
            "never sent",
        ),
    )
