"""Acks come back to the flusher through the client's `settled` queue, and only then does a
spool entry leave: retired after ok, kept as a dead letter with the store's reason if invalid.

A stand-in client records what is submitted and lets the test answer for the store; the
spool, tracker and flusher are the real ones.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rx_store import wait_for

from seriesflow.receiver.client import Pending, Settled
from seriesflow.receiver.flusher import Flusher
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.spool import Spool
from seriesflow.receiver.tracker import Tracker
from seriesflow.v1 import series_store_pb2 as pb

SERIES = "1.2.826.0.1.3680043.2.1"


class StandInClient:
    """What the flusher uses of StoreClient: start, submit, stop and the `settled` queue."""

    def __init__(self) -> None:
        self.settled: queue.Queue[Settled | None] = queue.Queue()
        self.submitted: queue.Queue[Pending] = queue.Queue()

    def start(self) -> None:
        pass

    def submit(self, pending: Pending, timeout: float | None = None) -> bool:
        self.submitted.put(pending)
        return True

    def stop(self, drain_timeout: float) -> None:
        self.settled.put(None)  # as StoreClient does once its stream thread has ended


@pytest.fixture
def delivery(tmp_path: Path) -> Iterator[tuple[Spool, StandInClient, Flusher]]:
    spool = Spool(tmp_path / "spool", max_bytes=10**8)
    spool.open()
    tracker = Tracker(idle_timeout=0.05, released_grace=0.05, max_age=600)
    client = StandInClient()
    flusher = Flusher(spool, tracker, client, ReceiverMetrics(), "rx-test")  # type: ignore[arg-type]
    record = pb.SeriesUpdate(
        series=pb.SeriesAttributes(series_instance_uid=SERIES),
        instances=[pb.Instance(sop_instance_uid=f"{SERIES}.1")],
    )
    seq = spool.append_later(SERIES, record.SerializeToString(), time.time()).result()
    tracker.add(SERIES, seq, association=None, representative=True)
    flusher.start([])
    yield spool, client, flusher
    flusher.stop(drain_timeout=0)
    spool.close()


def first_update(client: StandInClient) -> Pending:
    """The series' update, after the hold report that must come before it."""
    hold = client.submitted.get(timeout=5).update
    assert hold.holding and not hold.instances
    assert (hold.series.series_instance_uid, hold.source.receiver_id) == (SERIES, "rx-test")
    pending = client.submitted.get(timeout=5)
    assert not pending.update.holding
    # The update's position covers the hold's: the store closes this receiver's hold.
    assert pending.update.receiver_sequence >= hold.receiver_sequence > 0
    return pending


def test_a_series_is_reported_held_before_its_update_is_sent(
    delivery: tuple[Spool, StandInClient, Flusher],
) -> None:
    _, client, _ = delivery
    assert first_update(client).update.completion_reason == pb.COMPLETION_REASON_RELEASED


def test_a_hold_ack_sets_the_renewal_interval_and_retires_nothing(
    delivery: tuple[Spool, StandInClient, Flusher],
) -> None:
    spool, client, flusher = delivery
    hold = client.submitted.get(timeout=5)
    client.settled.put(
        Settled(hold, pb.SeriesAck(update_id=hold.update.update_id, ok=True, hold_seconds=30))
    )
    wait_for(lambda: flusher.renew_after == 10.0)
    assert spool.stats()[0] == 1 and spool.count_dead_letters() == 0


def test_a_sent_update_stays_in_the_spool_until_the_store_acks_it(
    delivery: tuple[Spool, StandInClient, Flusher],
) -> None:
    spool, client, _ = delivery
    pending = first_update(client)
    time.sleep(0.2)
    assert spool.stats()[0] == 1  # sent, not yet acked: still pending

    client.settled.put(Settled(pending, pb.SeriesAck(update_id=pending.update.update_id, ok=True)))

    wait_for(lambda: spool.stats()[0] == 0)
    assert spool.count_dead_letters() == 0


def test_an_update_rejected_as_invalid_becomes_a_dead_letter_with_the_reason(
    delivery: tuple[Spool, StandInClient, Flusher],
) -> None:
    spool, client, _ = delivery
    pending = first_update(client)
    error = pb.AckError(kind=pb.AckError.KIND_INVALID, field="series.modality", message="bad")

    client.settled.put(
        Settled(pending, pb.SeriesAck(update_id=pending.update.update_id, ok=False, error=error))
    )

    wait_for(lambda: spool.count_dead_letters() == 1)
    [letter] = spool.dead_letters()
    assert (letter.update_id, letter.series_uid, letter.num_instances) == (
        pending.update.update_id,
        SERIES,
        1,
    )
    assert (letter.error_kind, letter.error_field, letter.error_message) == (
        "invalid",
        "series.modality",
        "bad",
    )
    assert spool.stats()[0] == 0
