"""StoreSeries merging: acks, idempotency, order-freedom, completion, attributes."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import threading

from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    catalog_snapshot,
    fresh_database,
    make_update,
    migrated_url,
    rows,
    running_store,
    send,
    store_config,
    uid,
)

from seriesflow.v1 import series_store_pb2 as pb


def test_update_is_acked_ok_with_series_count_and_status(running_store: StoreThread) -> None:
    series = uid()
    sops = [f"{series}.{n}" for n in range(1, 6)]
    update = make_update(series, sops, update_id="u-1")
    [ack] = send(running_store.channel(), [update])
    assert ack.update_id == "u-1"
    assert ack.ok
    assert ack.num_instances == 5
    assert ack.status == pb.SERIES_STATUS_COMPLETE
    url = running_store.store.db.url
    assert rows(url, "SELECT count(*) FROM instances") == [(5,)]
    [(num, status, first, last)] = rows(
        url,
        "SELECT num_instances, status, first_received_at, last_received_at FROM series",
    )
    assert (num, status) == (5, "COMPLETE")
    assert (last - first).total_seconds() == 4


def test_every_update_gets_exactly_one_ack(running_store: StoreThread) -> None:
    updates = [
        make_update(s, [f"{s}.{n}" for n in range(1, 4)], update_id=f"u{i}")
        for i, s in enumerate(uid() for _ in range(40))
    ]
    acks = send(running_store.channel(), updates)
    assert sorted(a.update_id for a in acks) == sorted(f"u{i}" for i in range(40))
    assert all(a.ok and a.num_instances == 3 for a in acks)


def test_same_update_twice_changes_nothing(running_store: StoreThread) -> None:
    series = uid()
    update = make_update(series, [f"{series}.{n}" for n in range(1, 11)])
    url = running_store.store.db.url
    first = send(running_store.channel(), [update])
    before = catalog_snapshot(url)
    second = send(running_store.channel(), [update, update])
    assert catalog_snapshot(url) == before
    assert [a.num_instances for a in first + second] == [10, 10, 10]
    assert 'seriesflow_store_instances_total{result="duplicate"} 20.0' in (
        running_store.metrics_text()
    )


def test_reordered_updates_converge_to_the_same_rows(
    migrated_url: str, postgres_server_url: str
) -> None:
    series, study = uid(), uid()
    parts = [
        [f"{series}.{n}" for n in range(1, 30)],
        [f"{series}.{n}" for n in range(20, 60)],
        [f"{series}.{n}" for n in range(55, 80)],
    ]
    updates = [
        make_update(series, p, study_uid=study, reason=pb.COMPLETION_REASON_MAX_AGE) for p in parts
    ]
    # A second database, same server: apply the same updates in reverse order there.
    with fresh_database(postgres_server_url) as other:
        for url, order in ((migrated_url, updates), (other, updates[::-1])):
            store = StoreThread(store_config(url), url)
            try:
                for u in order:  # one stream per update: the order is guaranteed
                    send(store.channel(), [u])
            finally:
                store.stop()
        assert catalog_snapshot(migrated_url) == catalog_snapshot(other)
        assert rows(other, "SELECT num_instances FROM series") == [(79,)]


def test_series_split_over_concurrent_streams_counts_each_instance_once(
    running_store: StoreThread,
) -> None:
    series = uid()
    all_sops = [f"{series}.{n}" for n in range(1, 401)]
    # Eight streams, each with overlapping slices, all at the same moment.
    slices = [all_sops[i * 40 : i * 40 + 120] for i in range(8)]
    acks: list[pb.SeriesAck] = []
    lock = threading.Lock()

    def stream(part: list[str]) -> None:
        chunk = [
            make_update(series, part[j : j + 10], reason=pb.COMPLETION_REASON_MAX_AGE)
            for j in range(0, len(part), 10)
        ]
        got = send(running_store.channel(), chunk)
        with lock:
            acks.extend(got)

    threads = [threading.Thread(target=stream, args=(p,)) for p in slices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.ok for a in acks) and len(acks) == sum(len(p) // 10 for p in slices)
    url = running_store.store.db.url
    assert rows(url, "SELECT num_instances, total_size_bytes FROM series") == [
        (len(all_sops), sum(1000 + int(s.rsplit(".", 1)[1]) for s in all_sops))
    ]
    assert max(a.num_instances for a in acks) == len(all_sops)


def test_completion_reopen_and_resend_rules(running_store: StoreThread) -> None:
    series = uid()
    ch = running_store.channel()
    url = running_store.store.db.url

    def status() -> tuple[str, bool]:
        [(s, completed)] = rows(url, "SELECT status, completed_at IS NOT NULL FROM series")
        return s, completed

    partial = make_update(series, [f"{series}.1"], reason=pb.COMPLETION_REASON_MAX_AGE)
    [ack] = send(ch, [partial])
    assert ack.status == pb.SERIES_STATUS_RECEIVING and status() == ("RECEIVING", False)
    final = make_update(series, [f"{series}.2"], reason=pb.COMPLETION_REASON_IDLE)
    [ack] = send(ch, [final])
    assert ack.status == pb.SERIES_STATUS_COMPLETE and status() == ("COMPLETE", True)
    # A re-sent partial flush brings nothing new: the series stays COMPLETE.
    [ack] = send(ch, [partial])
    assert ack.status == pb.SERIES_STATUS_COMPLETE and ack.num_instances == 2
    # A late new instance without a completing reason reopens it.
    late = make_update(series, [f"{series}.3"], reason=pb.COMPLETION_REASON_UNSPECIFIED)
    [ack] = send(ch, [late])
    assert ack.status == pb.SERIES_STATUS_RECEIVING and ack.num_instances == 3
    assert status() == ("RECEIVING", False)
    released = make_update(series, [f"{series}.3"], reason=pb.COMPLETION_REASON_RELEASED)
    [ack] = send(ch, [released])
    assert ack.status == pb.SERIES_STATUS_COMPLETE and status() == ("COMPLETE", True)


def test_attributes_take_the_latest_non_empty_value(running_store: StoreThread) -> None:
    series, study = uid(), uid()
    ch = running_store.channel()
    send(
        ch,
        [
            make_update(
                series,
                [f"{series}.1"],
                study_uid=study,
                patient_name="Old^Name",
                series_description="first",
            )
        ],
    )
    send(
        ch,
        [
            make_update(
                series,
                [f"{series}.2"],
                study_uid=study,
                patient_name="",
                modality="",
                series_description="second",
            )
        ],
    )
    url = running_store.store.db.url
    assert rows(url, "SELECT patient_name FROM patients") == [("Old^Name",)]
    assert rows(url, "SELECT modality, series_description FROM series") == [("CT", "second")]
    send(ch, [make_update(series, [f"{series}.3"], study_uid=study, patient_name="New^Name")])
    assert rows(url, "SELECT patient_name FROM patients") == [("New^Name",)]


def test_two_updates_of_one_series_in_one_batch_are_merged_in_order(
    running_store: StoreThread,
) -> None:
    series = uid()
    updates = [
        make_update(
            series, [f"{series}.{n}"], reason=pb.COMPLETION_REASON_MAX_AGE, update_id=f"part{n}"
        )
        for n in range(1, 30)
    ] + [make_update(series, [f"{series}.30"], update_id="last")]
    acks = send(running_store.channel(), updates)
    assert len(acks) == 30 and all(a.ok for a in acks)
    by_id = {a.update_id: a for a in acks}
    assert by_id["last"].num_instances == 30
    assert by_id["last"].status == pb.SERIES_STATUS_COMPLETE
    url = running_store.store.db.url
    assert rows(url, "SELECT num_instances, status FROM series") == [(30, "COMPLETE")]


def test_invalid_dates_are_stored_null_with_raw_text(running_store: StoreThread) -> None:
    series = uid()
    update = make_update(series, [f"{series}.1"], series_date="20241341")
    update.study.study_date = "2024-02-29"
    send(running_store.channel(), [update])
    url = running_store.store.db.url
    [(d, raw)] = rows(url, "SELECT series_date, series_date_raw FROM series")
    assert d is None and raw == "20241341"
    [(sd,)] = rows(url, "SELECT study_date::text FROM studies")
    assert sd == "2024-02-29"


def test_instance_without_received_at_gets_the_store_receive_time(
    running_store: StoreThread,
) -> None:
    import datetime as dt

    series = uid()
    update = make_update(series, [f"{series}.1"])
    update.instances[0].ClearField("received_at")
    before = dt.datetime.now(dt.UTC)
    [ack] = send(running_store.channel(), [update])
    assert ack.ok
    [(received,)] = rows(running_store.store.db.url, "SELECT received_at FROM instances")
    assert before - dt.timedelta(seconds=1) <= received <= dt.datetime.now(dt.UTC)
