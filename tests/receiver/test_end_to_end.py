"""pynetdicom senders -> receiver -> real store -> PostgreSQL: what arrives, and how often."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import threading
import time

import rx_dicom
import rx_send
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, series_row, wait_for


def complete(database_url: str, series_uid: str, count: int) -> bool:
    row = series_row(database_url, series_uid)
    return (
        row is not None
        and row["num_instances"] == count
        and row["instance_rows"] == count
        and row["status"] == "COMPLETE"
    )


def test_one_series_on_one_association_arrives_complete_with_exact_count(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, series_idle_timeout=5)
    spec = rx_dicom.SeriesSpec(patient_name="Doe^Jane", patient_id="P-E2E")

    answers = rx_send.send_all(receiver.dicom_port, rx_dicom.series(spec, 12))

    assert {a.status for a in answers} == {0}
    # The association was released, so the short grace (0.2 s) completes it, not idle (5 s).
    wait_for(lambda: complete(database_url, spec.series_uid, 12), timeout=4)
    assert series_counts(database_url) == {spec.series_uid: 12}
    stored = series_row(database_url, spec.series_uid)
    assert stored is not None
    assert stored["patient_name"] == "Doe^Jane"
    assert stored["patient_id"] == "P-E2E"
    assert stored["completion_reason"] == "RELEASED"
    header = stored["representative_header"]
    assert isinstance(header, dict)
    assert header["0020000E"]["Value"] == [spec.series_uid]
    assert "7FE00010" not in header


def test_interleaved_series_over_eight_concurrent_associations_are_counted_exactly(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    specs = [rx_dicom.SeriesSpec() for _ in range(4)]
    per_series = 24
    datasets = {s.series_uid: rx_dicom.series(s, per_series) for s in specs}
    # Association k sends every 8th instance of every series, series interleaved: each
    # series is split over all 8 associations and each association carries all 4 series.
    plans = [
        [datasets[s.series_uid][i] for i in range(k, per_series, 8) for s in specs]
        for k in range(8)
    ]
    answers: list[list[rx_send.Answer]] = [[] for _ in range(8)]

    def sender(k: int) -> None:
        answers[k] = rx_send.send_all(receiver.dicom_port, plans[k], calling=f"MOD{k}")

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(a.status == 0 for batch in answers for a in batch)
    assert sum(len(batch) for batch in answers) == 4 * per_series
    wait_for(lambda: all(complete(database_url, s.series_uid, per_series) for s in specs))
    assert series_counts(database_url) == {s.series_uid: per_series for s in specs}


def test_resent_duplicates_do_not_change_the_count(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    datasets = rx_dicom.series(spec, 6)

    rx_send.send_all(receiver.dicom_port, datasets + datasets[:3])  # duplicates in one group
    wait_for(lambda: complete(database_url, spec.series_uid, 6))
    rx_send.send_all(receiver.dicom_port, datasets)  # the whole series again, later
    wait_for(lambda: receiver.spool.stats()[0] == 0)

    assert series_counts(database_url) == {spec.series_uid: 6}
    wait_for(lambda: complete(database_url, spec.series_uid, 6))


def test_late_instance_reopens_a_completed_series_and_updates_its_count(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    datasets = rx_dicom.series(spec, 4)

    rx_send.send_all(receiver.dicom_port, datasets[:3])
    wait_for(lambda: complete(database_url, spec.series_uid, 3))
    rx_send.send_all(receiver.dicom_port, datasets[3:])

    wait_for(lambda: complete(database_url, spec.series_uid, 4))
    assert series_counts(database_url) == {spec.series_uid: 4}


def test_names_in_latin1_utf8_and_iso2022_japanese_are_stored_as_unicode(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    cases = list(rx_dicom.charset_instances())
    assoc = rx_send.associate(receiver.dicom_port)
    try:
        for ds, _ in cases:
            # Each its own series, so each series' patient name is that instance's.
            ds.SeriesInstanceUID = rx_dicom.uid()
            ds.SOPInstanceUID = rx_dicom.uid()
            # One study and patient per case: a study's patient is fixed by its first update.
            ds.StudyInstanceUID = rx_dicom.uid()
            ds.PatientID = f"CHARSET-{ds.SOPInstanceUID[-6:]}"
            assert rx_send.store(assoc, ds, "1.2.840.10008.1.2.1").status == 0
    finally:
        assoc.release()

    for ds, expected in cases:
        wait_for(lambda ds=ds: complete(database_url, str(ds.SeriesInstanceUID), 1))
        stored = series_row(database_url, str(ds.SeriesInstanceUID))
        assert stored is not None
        assert stored["patient_name"] == expected
        assert stored["text_decoding_fallbacks"] == []
    assert cases[2][1] == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_a_long_series_is_delivered_in_parts_at_max_age_then_completes(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, series_idle_timeout=5, series_max_age=0.4)
    spec = rx_dicom.SeriesSpec()
    datasets = rx_dicom.series(spec, 12)
    seen_receiving = False
    assoc = rx_send.associate(receiver.dicom_port)
    try:
        for ds in datasets:  # ~1.2 s of sending: three max-age parts or so
            assert rx_send.store(assoc, ds).status == 0
            time.sleep(0.1)
            row = series_row(database_url, spec.series_uid)
            if row is not None and row["status"] == "RECEIVING" and row["num_instances"]:
                seen_receiving = True  # a part arrived while the series was still open
    finally:
        assoc.release()

    wait_for(lambda: complete(database_url, spec.series_uid, 12))
    assert seen_receiving
    assert series_row(database_url, spec.series_uid)["completion_reason"] == "RELEASED"  # type: ignore[index]
