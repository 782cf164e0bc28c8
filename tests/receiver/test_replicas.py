"""Two receivers and two stores on one PostgreSQL, fed real DICOM: completion holds across
replicas, a late instance reopens (version 2), a watcher resumes exactly from its cursor,
and a receiver killed while it holds a series open stops holding it once its hold expires.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
import pytest
from rx_dicom import SeriesSpec, instance
from rx_harness import ReceiverProcess, receiver_processes  # noqa: F401
from rx_send import associate, store
from rx_store import StoreProcess, wait_for

from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

# ruff: noqa: F811

IDLE_TIMEOUT = 3.0  # each receiver's idle wait; the pause below is shorter
PAUSE = 1.5
HOLD_TIMEOUT = 4
COMPLETED = pb.SERIES_EVENT_KIND_COMPLETED


@dataclass
class Cluster:
    database_url: str
    stores: list[StoreProcess]
    receivers: list[ReceiverProcess]


@pytest.fixture
def cluster(
    database_url: str, tmp_path: Path, receiver_processes: list[ReceiverProcess]
) -> Iterator[Cluster]:
    stores = [
        StoreProcess(database_url, tmp_path / f"store{n}", hold_timeout=str(HOLD_TIMEOUT))
        for n in range(2)
    ]
    for s in stores:
        s.start()
    receivers = [
        ReceiverProcess(
            tmp_path / f"rx{n}",
            stores[n].address,
            receiver_id=f"rx-{n}",
            series_idle_timeout=str(IDLE_TIMEOUT),
            series_released_grace="0.3",
            series_completion_mode="fixed",
        )
        for n in range(2)
    ]
    for r in receivers:
        receiver_processes.append(r)
        r.start()
    try:
        yield Cluster(database_url, stores, receivers)
    finally:
        for r in receivers:
            if r.process is not None and r.process.poll() is None:
                r.terminate()
        for s in stores:
            s.stop()


@dataclass
class Watcher:
    """Collects WatchSeries events (with their arrival time) in a thread."""

    address: str
    after: str = ""
    events: list[tuple[pb.SeriesEvent, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._channel = grpc.insecure_channel(self.address)
        stub = pb_grpc.SeriesStoreStub(self._channel)
        self._call = stub.WatchSeries(pb.WatchSeriesRequest(after_cursor=self.after))
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        try:
            for event in self._call:
                self.events.append((event, time.time()))
        except grpc.RpcError:
            pass

    def of(self, series: str) -> list[pb.SeriesEvent]:
        return [e for e, _ in self.events if e.series.series_instance_uid == series]

    def stop(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


def holds(database_url: str, series: str) -> dict[str, bool]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT receiver_id, open FROM series_holds WHERE series_instance_uid = %s",
            (series,),
        ).fetchall()
    return {str(r): bool(o) for r, o in found}


def replay_all(address: str, after: str) -> list[pb.SeriesEvent]:
    watcher = Watcher(address, after)
    time.sleep(2.0)
    watcher.stop()
    return [e for e, _ in watcher.events]


def test_a_series_split_over_two_receivers_completes_once_after_its_last_instance(
    cluster: Cluster,
) -> None:
    rx0, rx1 = cluster.receivers
    watcher = Watcher(cluster.stores[1].address)
    time.sleep(0.5)  # the watch starts "from now": let it take its position
    spec = SeriesSpec()
    series = spec.series_uid
    try:
        # rx-1 starts receiving the series, on an association it keeps open.
        slow = associate(rx1.dicom_port, calling="SLOWMOD")
        assert slow.is_established
        for n in (6, 7, 8):
            assert store(slow, instance(spec, n)).status == 0
        wait_for(lambda: holds(cluster.database_url, series).get("rx-1"))
        # rx-0 gets the rest in one association and releases it: its part is idle soon,
        # while rx-1 still holds the series (a pause shorter than its idle timeout).
        fast = associate(rx0.dicom_port, calling="FASTPACS")
        assert fast.is_established
        for n in range(1, 6):
            assert store(fast, instance(spec, n)).status == 0
        fast.release()
        wait_for(lambda: holds(cluster.database_url, series).get("rx-0") is False)
        time.sleep(PAUSE)
        assert [e for e in watcher.of(series) if e.kind == COMPLETED] == []
        for n in (9, 10):
            assert store(slow, instance(spec, n)).status == 0
        last_instance_at = time.time()
        slow.release()
        wait_for(lambda: any(e.kind == COMPLETED for e in watcher.of(series)), timeout=30)
        time.sleep(IDLE_TIMEOUT + 1)  # nothing else may complete it again
        completions = [e for e in watcher.of(series) if e.kind == COMPLETED]
        assert len(completions) == 1
        [done] = completions
        assert done.completion_version == 1 and done.series.num_instances == 10
        assert done.occurred_at.ToDatetime().timestamp() + 0.5 >= last_instance_at
        assert done.series.status == pb.SERIES_STATUS_COMPLETE

        # A late instance at rx-0: reopened, then completed again as version 2.
        assert all(a.status == 0 for a in _send(rx0.dicom_port, [instance(spec, 11)]))
        wait_for(
            lambda: (
                [e.completion_version for e in watcher.of(series) if e.kind == COMPLETED] == [1, 2]
            ),
            timeout=30,
        )
        kinds = [e.kind for e in watcher.of(series)]
        assert kinds.count(pb.SERIES_EVENT_KIND_REOPENED) == 1
        assert kinds.index(pb.SERIES_EVENT_KIND_REOPENED) > kinds.index(COMPLETED)
        assert watcher.of(series)[-1].series.num_instances == 11
    finally:
        watcher.stop()

    # A consumer that stopped after its third event and resumed with that cursor, on the
    # other store, sees exactly the events a full replay has after it.
    full = replay_all(cluster.stores[0].address, "0")
    assert [int(e.cursor) for e in full] == sorted({int(e.cursor) for e in full})
    first = Watcher(cluster.stores[0].address, "0")
    wait_for(lambda: len(first.events) >= 3)
    first.stop()
    seen = [e for e, _ in first.events[:3]]
    resumed = replay_all(cluster.stores[1].address, seen[-1].cursor)
    assert seen + resumed == full


def _send(port: int, datasets: list[object]) -> list[object]:
    assoc = associate(port)
    assert assoc.is_established
    try:
        return [store(assoc, ds) for ds in datasets]  # type: ignore[arg-type]
    finally:
        assoc.release()


def test_a_receiver_killed_while_holding_a_series_stops_holding_it_after_the_hold_expires(
    cluster: Cluster,
) -> None:
    rx0, rx1 = cluster.receivers
    spec = SeriesSpec()
    series = spec.series_uid
    held = associate(rx1.dicom_port)
    assert held.is_established
    assert store(held, instance(spec, 1)).status == 0
    wait_for(lambda: holds(cluster.database_url, series).get("rx-1"))
    rx1.kill()  # before its idle timeout: the instance is acknowledged, still in its spool
    assert all(a.status == 0 for a in _send(rx0.dicom_port, [instance(spec, 2)]))

    def state() -> tuple[str, str, str] | None:
        with psycopg.connect(cluster.database_url) as conn:
            row = conn.execute(
                "SELECT status, completion_reason, completion_detail FROM series"
                " WHERE series_instance_uid = %s",
                (series,),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))

    wait_for(lambda: state() is not None and state()[0] == "RECEIVING", timeout=30)  # type: ignore[index]
    wait_for(lambda: state() is not None and state()[0] == "COMPLETE", timeout=HOLD_TIMEOUT + 20)  # type: ignore[index]
    _, reason, detail = state()  # type: ignore[misc]
    assert reason == "HOLD_EXPIRED" and "rx-1" in detail

    # Back from the dead, rx-1 delivers what it had acknowledged: version 2 with both.
    rx1.start()

    def version() -> int:
        with psycopg.connect(cluster.database_url) as conn:
            row = conn.execute(
                "SELECT completion_version FROM series WHERE series_instance_uid = %s",
                (series,),
            ).fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: version() == 2, timeout=30)
    events = [e for e in replay_all(cluster.stores[0].address, "0") if e.kind == COMPLETED]
    done = [e for e in events if e.series.series_instance_uid == series]
    assert [e.completion_version for e in done] == [1, 2]
    assert done[-1].series.num_instances == 2
    assert done[-1].completion_reason != pb.COMPLETION_REASON_HOLD_EXPIRED
