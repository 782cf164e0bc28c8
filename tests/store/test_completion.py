"""Store-side completion across receivers (holds), completion versions and the event log.

Receivers are played by StoreSeries calls here; tests/e2e/test_replicas.py does the same
with real receivers and real DICOM.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from st_harness import (  # noqa: F401
    StoreThread,
    make_update,
    migrated_url,
    rows,
    running_store,
    send,
    store_config,
    uid,
)

from seriesflow.store import events
from seriesflow.store.completion import forget_closed_holds
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

# ruff: noqa: F811

IDLE = pb.COMPLETION_REASON_IDLE
PARTIAL = pb.COMPLETION_REASON_UNSPECIFIED
COMPLETED = pb.SERIES_EVENT_KIND_COMPLETED


def hold(series: str, receiver: str, sequence: int = 0) -> pb.SeriesUpdate:
    return pb.SeriesUpdate(
        update_id=uuid.uuid4().hex,
        holding=True,
        series=pb.SeriesAttributes(series_instance_uid=series),
        source=pb.Source(receiver_id=receiver),
        receiver_sequence=sequence,
    )


def from_receiver(update: pb.SeriesUpdate, receiver: str, sequence: int = 0) -> pb.SeriesUpdate:
    update.source.receiver_id = receiver
    update.receiver_sequence = sequence
    return update


def replay(channel: grpc.Channel, after: str = "0", **filters: object) -> list[pb.SeriesEvent]:
    """Every event after `after` that is in the log now (the call ends when it waits)."""
    stub = pb_grpc.SeriesStoreStub(channel)
    call = stub.WatchSeries(pb.WatchSeriesRequest(after_cursor=after, **filters))  # type: ignore[arg-type]
    out: list[pb.SeriesEvent] = []
    stopper = threading.Timer(2.0, call.cancel)
    stopper.start()
    try:
        for event in call:
            out.append(event)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            raise
    finally:
        stopper.cancel()
    return out


def kinds(events: list[pb.SeriesEvent], series: str) -> list[str]:
    return [
        pb.SeriesEventKind.Name(e.kind).removeprefix("SERIES_EVENT_KIND_")
        for e in events
        if e.series.series_instance_uid == series
    ]


def status_of(url: str, series: str) -> tuple[str, int, str, str]:
    [row] = rows(
        url,
        "SELECT status, completion_version, completion_reason, completion_detail FROM series"
        " WHERE series_instance_uid = %s",
        series,
    )
    return row  # type: ignore[return-value]


def test_a_series_completes_only_when_every_receiver_that_holds_it_is_idle(
    running_store: StoreThread,
) -> None:
    series = uid()
    ch = running_store.channel()
    url = running_store.store.db.url
    [ack_a, ack_b] = send(ch, [hold(series, "rx-a", 1), hold(series, "rx-b", 1)])
    assert ack_a.ok and ack_a.hold_seconds == 300 and ack_b.ok
    [ack] = send(ch, [from_receiver(make_update(series, [f"{series}.1"]), "rx-a", 5)])
    # rx-a is idle, rx-b still holds it: RECEIVING, and the detail says who holds it.
    assert ack.status == pb.SERIES_STATUS_RECEIVING
    assert status_of(url, series)[:2] == ("RECEIVING", 0)
    assert "rx-b" in status_of(url, series)[3]
    [ack] = send(ch, [from_receiver(make_update(series, [f"{series}.2"]), "rx-b", 9)])
    assert ack.status == pb.SERIES_STATUS_COMPLETE and ack.num_instances == 2
    assert status_of(url, series)[:3] == ("COMPLETE", 1, "IDLE")
    events = replay(ch)
    assert kinds(events, series) == ["CREATED", "INSTANCES_ADDED", "INSTANCES_ADDED", "COMPLETED"]
    [done] = [e for e in events if e.kind == COMPLETED]
    assert done.completion_version == 1 and done.series.num_instances == 2
    assert done.completion_reason == IDLE and "rx-b" in done.completion_detail


def test_a_late_instance_reopens_and_the_next_completion_is_version_2(
    running_store: StoreThread,
) -> None:
    series = uid()
    ch = running_store.channel()
    url = running_store.store.db.url
    send(ch, [from_receiver(make_update(series, [f"{series}.1"]), "rx-a", 1)])
    assert status_of(url, series)[:2] == ("COMPLETE", 1)
    # The receiver reports the late instance's series as held before it flushes it.
    [ack] = send(ch, [hold(series, "rx-a", 2)])
    assert ack.status == pb.SERIES_STATUS_RECEIVING
    send(ch, [from_receiver(make_update(series, [f"{series}.2"]), "rx-a", 2)])
    assert status_of(url, series)[:2] == ("COMPLETE", 2)
    events = replay(ch)
    assert kinds(events, series) == [
        "CREATED",
        "INSTANCES_ADDED",
        "COMPLETED",
        "REOPENED",
        "INSTANCES_ADDED",
        "COMPLETED",
    ]
    assert [e.completion_version for e in events if e.kind == COMPLETED] == [1, 2]
    cursors = [int(e.cursor) for e in events]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


def test_a_late_instance_without_a_hold_report_still_reopens_and_recompletes(
    running_store: StoreThread,
) -> None:
    series = uid()
    ch = running_store.channel()
    send(ch, [make_update(series, [f"{series}.1"])])
    send(ch, [make_update(series, [f"{series}.2"])])
    assert kinds(replay(ch), series) == [
        "CREATED",
        "INSTANCES_ADDED",
        "COMPLETED",
        "REOPENED",
        "INSTANCES_ADDED",
        "COMPLETED",
    ]


def test_re_sent_updates_change_nothing_and_write_no_event(running_store: StoreThread) -> None:
    series = uid()
    ch = running_store.channel()
    first = from_receiver(make_update(series, [f"{series}.1"], reason=PARTIAL), "rx-a", 3)
    last = from_receiver(make_update(series, [f"{series}.2"]), "rx-a", 4)
    send(ch, [first, last])
    before = replay(ch)
    send(ch, [first, last, hold(series, "rx-a", 1)])  # stale: rx-a is idle up to 4
    assert status_of(running_store.store.db.url, series)[:2] == ("COMPLETE", 1)
    assert replay(ch) == before


def test_a_hold_that_is_not_renewed_expires_and_the_reason_says_whose(
    migrated_url: str,
) -> None:
    store = StoreThread(store_config(migrated_url, hold_timeout=1), migrated_url)
    try:
        series = uid()
        ch = store.channel()
        send(ch, [hold(series, "rx-gone", 1)])
        send(ch, [from_receiver(make_update(series, [f"{series}.1"]), "rx-a", 1)])
        assert status_of(migrated_url, series)[0] == "RECEIVING"
        deadline = time.monotonic() + 30
        while status_of(migrated_url, series)[0] != "COMPLETE":
            assert time.monotonic() < deadline, "the expired hold never released the series"
            time.sleep(0.1)
        _, version, reason, detail = status_of(migrated_url, series)
        assert (version, reason) == (1, "HOLD_EXPIRED")
        assert "rx-gone" in detail and "expired" in detail
        assert "seriesflow_store_holds_expired_total 1.0" in store.metrics_text()
        [done] = [e for e in replay(ch) if e.kind == COMPLETED]
        assert done.completion_reason == pb.COMPLETION_REASON_HOLD_EXPIRED
    finally:
        store.stop()


def test_a_hold_report_needs_a_series_uid_and_carries_no_instances(
    running_store: StoreThread,
) -> None:
    ch = running_store.channel()
    bad = hold("", "rx-a")
    with_instances = make_update(uid(), ["1.2.3.9"])
    with_instances.holding = True
    acks = send(ch, [bad, with_instances])
    assert [a.ok for a in acks] == [False, False]
    assert acks[0].error.field == "series.series_instance_uid"
    assert acks[1].error.field == "instances"


def test_watch_resumes_exactly_after_a_cursor_and_filters_by_kind(
    running_store: StoreThread,
) -> None:
    ch = running_store.channel()
    for n in range(3):
        series = uid()
        send(ch, [make_update(series, [f"{series}.{n + 1}"])])
    everything = replay(ch)
    assert len(everything) == 9
    middle = everything[4].cursor
    assert replay(ch, middle) == everything[5:]
    completed = replay(ch, "0", kinds=[COMPLETED])
    assert completed == [e for e in everything if e.kind == COMPLETED]
    assert replay(ch, "0", modality="MR") == []
    assert replay(ch, "0", calling_ae_title="MODALITY") == everything


@pytest.mark.parametrize(
    ("cursor", "code"),
    [
        ("abc", grpc.StatusCode.INVALID_ARGUMENT),
        ("-1", grpc.StatusCode.INVALID_ARGUMENT),
        ("99999999999999999999", grpc.StatusCode.INVALID_ARGUMENT),
        ("1000000", grpc.StatusCode.OUT_OF_RANGE),
    ],
)
def test_watch_refuses_a_cursor_it_cannot_serve_and_says_why(
    running_store: StoreThread, cursor: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        replay(running_store.channel(), cursor)
    assert caught.value.code() == code
    assert "cursor" in (caught.value.details() or "")


def test_a_watcher_behind_pruned_events_is_told_to_resync(running_store: StoreThread) -> None:
    ch = running_store.channel()
    series = uid()
    send(ch, [make_update(series, [f"{series}.1"])])
    last = replay(ch)[-1].cursor
    url = running_store.store.db.url
    rows(url, "DELETE FROM series_events RETURNING cursor")
    rows(url, "UPDATE series_event_log SET pruned_through = %s RETURNING 1", int(last))
    with pytest.raises(grpc.RpcError) as caught:
        replay(ch, "0")
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "ListSeries" in (caught.value.details() or "")
    assert f"after_cursor={last}" in (caught.value.details() or "")
    assert replay(ch, last) == []


@pytest.fixture
def two_stores(migrated_url: str) -> Iterator[tuple[StoreThread, StoreThread]]:
    first = StoreThread(store_config(migrated_url), migrated_url)
    second = StoreThread(store_config(migrated_url), migrated_url)
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def test_a_watcher_on_one_store_gets_events_committed_through_another(
    two_stores: tuple[StoreThread, StoreThread],
) -> None:
    writer, reader = two_stores
    stub = pb_grpc.SeriesStoreStub(reader.channel())
    call = stub.WatchSeries(pb.WatchSeriesRequest(kinds=[COMPLETED]))
    got: list[pb.SeriesEvent] = []

    def consume() -> None:
        try:
            for event in call:
                got.append(event)
        except grpc.RpcError:
            pass

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.5)  # the watch starts "from now": let it take its position first
    series = uid()
    send(writer.channel(), [make_update(series, [f"{series}.1"])])
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    call.cancel()
    consumer.join(10)
    assert [e.series.series_instance_uid for e in got] == [series]


def test_holds_closed_for_a_day_are_forgotten_and_open_ones_kept(migrated_url: str) -> None:
    rows(
        migrated_url,
        "INSERT INTO series_holds (series_instance_uid, receiver_id, open, expires_at,"
        " updated_at) VALUES ('1.2.1', 'old-closed', false, now(), now() - interval '2 days'),"
        " ('1.2.2', 'old-open', true, now(), now() - interval '2 days'),"
        " ('1.2.3', 'new-closed', false, now(), now()) RETURNING 1",
    )

    async def forget() -> int:
        async with await psycopg.AsyncConnection.connect(migrated_url) as conn:
            return await forget_closed_holds(conn)

    assert asyncio.run(forget()) == 1
    kept = rows(migrated_url, "SELECT receiver_id FROM series_holds ORDER BY 1")
    assert kept == [("new-closed",), ("old-open",)]


def test_a_consumer_that_stops_reading_shows_its_lag_growing(running_store: StoreThread) -> None:
    ch = running_store.channel()
    series = [uid() for _ in range(400)]
    # 1,200 events of ~20 kB each: more than gRPC buffers for a reader that does not read.
    send(ch, [make_update(s, [f"{s}.1"], series_description="x" * 20_000) for s in series])
    stub = pb_grpc.SeriesStoreStub(running_store.channel())
    call = stub.WatchSeries(pb.WatchSeriesRequest(after_cursor="0", consumer="stalled"))
    next(call)  # then reads nothing more: flow control stops the store mid-replay

    def lag() -> float:
        for line in running_store.metrics_text().splitlines():
            if line.startswith('seriesflow_store_watch_lag_events{consumer="stalled"}'):
                return float(line.rsplit(" ", 1)[1])
        return -1.0

    time.sleep(1.0)
    # gRPC buffers a few hundred of the 1,200 for the reader; the rest are not sent.
    assert lag() > 300
    more = uid()
    before = lag()
    send(ch, [make_update(more, [f"{more}.1"])])
    deadline = time.monotonic() + 10
    while lag() < before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lag() >= before + 3  # new commits count against it although it reads nothing
    call.cancel()
    deadline = time.monotonic() + 10
    while lag() != -1.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lag() == -1.0  # gone with its last watch


def test_retention_prunes_a_prefix_of_the_log_and_records_where_it_ends(
    running_store: StoreThread,
) -> None:
    ch = running_store.channel()
    for _ in range(3):
        series = uid()
        send(ch, [make_update(series, [f"{series}.1"])])  # 3 events each
    everything = replay(ch)
    url = running_store.store.db.url

    async def prune(batch: int) -> int:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cutoff = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)  # all are older
            deleted = await events.prune(conn, cutoff, batch)
            await conn.commit()
            return deleted

    assert asyncio.run(prune(4)) == 4  # a batch: the oldest four, a prefix
    [(through,)] = rows(url, "SELECT pruned_through FROM series_event_log")
    assert through == int(everything[3].cursor)
    assert replay(ch, str(through)) == everything[4:]  # the rest is intact, in order
    with pytest.raises(grpc.RpcError) as caught:
        replay(ch, everything[2].cursor)  # a consumer behind the pruned point
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert asyncio.run(prune(1000)) == len(everything) - 4
    assert rows(url, "SELECT count(*) FROM series_events") == [(0,)]
