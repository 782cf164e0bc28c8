"""Debian's dcmtk storescu and Orthanc (as a PACS) sending to the receiver; counts exact."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import threading
from pathlib import Path

import rx_dicom
from conftest import require_tool
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, series_row, wait_for
from rx_tools import Orthanc, storescu


def all_complete(database_url: str, expected: dict[str, int]) -> bool:
    rows = {uid: series_row(database_url, uid) for uid in expected}
    return all(
        row is not None and row["num_instances"] == expected[uid] and row["status"] == "COMPLETE"
        for uid, row in rows.items()
    )


def write_series(folder: Path, count: int, **spec: object) -> tuple[str, list[Path]]:
    series = rx_dicom.SeriesSpec(**spec)  # type: ignore[arg-type]
    return series.series_uid, rx_dicom.write_files(rx_dicom.series(series, count), folder)


def test_storescu_one_association_for_many_files(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    tool = require_tool("storescu")
    receiver = make_receiver(store_address=store.address)
    series_a, files_a = write_series(tmp_path / "a", 20)
    series_b, files_b = write_series(tmp_path / "b", 15)

    result = storescu(tool, receiver.dicom_port, files_a + files_b)

    assert result.returncode == 0, result.stderr
    wait_for(lambda: all_complete(database_url, {series_a: 20, series_b: 15}))
    assert series_counts(database_url) == {series_a: 20, series_b: 15}


def test_storescu_one_association_per_file(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    tool = require_tool("storescu")
    receiver = make_receiver(store_address=store.address, series_idle_timeout=2)
    series_uid, files = write_series(tmp_path / "s", 8)

    for path in files:
        result = storescu(tool, receiver.dicom_port, [path])
        assert result.returncode == 0, result.stderr

    wait_for(lambda: all_complete(database_url, {series_uid: 8}))
    assert series_counts(database_url) == {series_uid: 8}


def test_storescu_senders_in_parallel_with_nagle_on_and_off(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    tool = require_tool("storescu")
    receiver = make_receiver(store_address=store.address)
    jobs = [write_series(tmp_path / f"p{k}", 12) for k in range(4)]
    results: list[int] = [-1] * 4

    def send(k: int) -> None:
        # Half of them leave Nagle on, as Debian's storescu does by default.
        results[k] = storescu(tool, receiver.dicom_port, jobs[k][1], nodelay=k % 2 == 0).returncode

    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [0, 0, 0, 0]
    expected = {uid: 12 for uid, _ in jobs}
    wait_for(lambda: all_complete(database_url, expected))
    assert series_counts(database_url) == expected


def test_orthanc_forwarding_studies_as_a_pacs(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    binary = require_tool("Orthanc")
    receiver = make_receiver(store_address=store.address)
    study_uid = rx_dicom.uid()
    series_1, files_1 = write_series(tmp_path / "o1", 10, study_uid=study_uid)
    series_2, files_2 = write_series(tmp_path / "o2", 7, study_uid=study_uid)
    other_study, files_3 = write_series(tmp_path / "o3", 5)
    orthanc = Orthanc(binary, tmp_path / "orthanc", receiver.dicom_port)
    orthanc.start()
    try:
        studies = {orthanc.upload(p)["ParentStudy"] for p in files_1 + files_2 + files_3}
        assert len(studies) == 2
        for study in studies:
            orthanc.forward_study(study)
    finally:
        orthanc.stop()

    expected = {series_1: 10, series_2: 7, other_study: 5}
    wait_for(lambda: all_complete(database_url, expected))
    assert series_counts(database_url) == expected
