"""Updates a store rejects as INVALID are kept as dead letters, listed, and replayed.

The rejecting side is a real gRPC server on a real socket that applies a rule the real
store does not have (it refuses one series); the replay then goes to the real store.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import rx_dicom
import rx_send
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for

from seriesflow.receiver import dead_letters
from seriesflow.receiver.spool import Spool
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc


class FussyStore(pb_grpc.SeriesStoreServicer):
    """Acks every update, except those of `refused` series: INVALID, naming the field.
    Hold and preview reports (no instances, not spooled) are acked as a store does and not
    `seen`."""

    def __init__(self, refused: set[str], flaky: bool = False) -> None:
        self.refused = refused
        self.flaky = flaky  # reject with an unknown kind the first time each update is seen
        self.seen: list[pb.SeriesUpdate] = []
        self.lock = threading.Lock()

    def StoreSeries(
        self, request_iterator: Iterator[pb.SeriesUpdate], context: grpc.ServicerContext
    ) -> Iterator[pb.SeriesAck]:
        for update in request_iterator:
            if update.holding or update.HasField("preview"):
                yield pb.SeriesAck(update_id=update.update_id, ok=True, hold_seconds=300)
                continue
            with self.lock:
                first_time = all(u.update_id != update.update_id for u in self.seen)
                self.seen.append(update)
            if self.flaky and first_time:
                yield pb.SeriesAck(
                    update_id=update.update_id,
                    ok=False,
                    error=pb.AckError(
                        kind=pb.AckError.KIND_UNSPECIFIED,
                        message="unknown kind",
                    ),
                )
            elif update.series.series_instance_uid in self.refused:
                yield pb.SeriesAck(
                    update_id=update.update_id,
                    ok=False,
                    error=pb.AckError(
                        kind=pb.AckError.KIND_INVALID,
                        field="series.series_instance_uid",
                        message="refused by the test's rule",
                    ),
                )
            else:
                yield pb.SeriesAck(update_id=update.update_id, ok=True)


@pytest.fixture
def fussy() -> Iterator[tuple[FussyStore, str]]:
    servicer = FussyStore(set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SeriesStoreServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_rejected_update_is_dead_lettered_listed_and_replayed_to_the_store(
    make_receiver: MakeReceiver,
    fussy: tuple[FussyStore, str],
    store: StoreProcess,
    database_url: str,
) -> None:
    servicer, address = fussy
    refused, accepted = rx_dicom.SeriesSpec(), rx_dicom.SeriesSpec()
    servicer.refused.add(refused.series_uid)
    receiver = make_receiver(store_address=address)

    rx_send.send_all(
        receiver.dicom_port, rx_dicom.series(refused, 3) + rx_dicom.series(accepted, 2)
    )
    wait_for(lambda: receiver.spool.count_dead_letters() == 1)
    wait_for(lambda: receiver.spool.stats()[0] == 0)  # nothing pending: not retried forever

    config = receiver.config
    listing = io.StringIO()
    assert dead_letters.main(config, replay=False, update_ids=[], out=listing) == 0
    [line] = [row for row in listing.getvalue().splitlines()[1:]]
    update_id, _, series_uid, count, kind, field, message = line.split("\t")
    assert (series_uid, count, kind, field) == (
        refused.series_uid,
        "3",
        "invalid",
        "series.series_instance_uid",
    )
    assert message == "refused by the test's rule"

    # Replaying to a store that still refuses keeps the letter.
    out = io.StringIO()
    assert dead_letters.main(config, replay=True, update_ids=[update_id], out=out) == 1
    assert "still rejected" in out.getvalue()
    assert receiver.spool.count_dead_letters() == 1

    # The cause is fixed (here: the real store, which has no such rule): replay delivers it.
    fixed = dataclasses.replace(config, store_address=store.address)
    out = io.StringIO()
    assert dead_letters.main(fixed, replay=True, update_ids=[], out=out) == 0
    assert f"{update_id}\treplayed" in out.getvalue()
    assert series_counts(database_url) == {refused.series_uid: 3}
    assert receiver.spool.count_dead_letters() == 0


def test_unknown_update_id_is_reported(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver()
    out = io.StringIO()
    assert dead_letters.main(receiver.config, replay=False, update_ids=["nope"], out=out) == 1
    assert "no dead letter with update id nope" in out.getvalue()


def test_rejections_of_an_unknown_kind_are_retried_on_the_same_stream_not_dead_lettered(
    make_receiver: MakeReceiver, fussy: tuple[FussyStore, str]
) -> None:
    servicer, address = fussy
    servicer.flaky = True
    receiver = make_receiver(store_address=address)
    spec = rx_dicom.SeriesSpec()

    rx_send.send_all(receiver.dicom_port, rx_dicom.series(spec, 4))

    wait_for(lambda: receiver.spool.stats()[0] == 0)
    [update_id] = {u.update_id for u in servicer.seen}  # one update, sent again
    assert len(servicer.seen) == 2
    assert receiver.spool.count_dead_letters() == 0
    assert receiver.client.connected  # no reconnect was needed
    assert update_id


def test_an_update_larger_than_the_store_accepts_is_kept_aside_never_sent(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    # A spool written before intake refused such instances (an older receiver) holds one
    # record too large for the store's gRPC limit; sending it would break the stream forever.
    data_dir = tmp_path / "upgraded"
    spool = Spool(data_dir / "spool", max_bytes=2**31)
    spool.open()
    big = rx_dicom.SeriesSpec()
    record = pb.SeriesUpdate(
        study=pb.StudyAttributes(study_instance_uid=big.study_uid),
        series=pb.SeriesAttributes(series_instance_uid=big.series_uid),
        instances=[pb.Instance(sop_instance_uid=f"{big.series_uid}.1", size_bytes=1)],
        representative_header_json='{"00081030":{"vr":"LO","Value":["' + "x" * 65 * 2**20 + '"]}}',
    )
    spool.append_later(big.series_uid, record.SerializeToString(), time.time()).result()
    spool.close()

    receiver = make_receiver(data_dir=data_dir, store_address=store.address)
    wait_for(lambda: receiver.spool.count_dead_letters() == 1, timeout=30)
    [letter] = receiver.spool.dead_letters()
    assert letter.series_uid == big.series_uid
    assert "larger than the store accepts" in letter.error_message

    normal = rx_dicom.SeriesSpec()
    rx_send.send_all(receiver.dicom_port, rx_dicom.series(normal, 3))
    wait_for(lambda: series_counts(database_url) == {normal.series_uid: 3})
    reconnects = receiver.metrics.registry.get_sample_value(
        "seriesflow_receiver_stream_reconnects_total"
    )
    assert reconnects == 0
