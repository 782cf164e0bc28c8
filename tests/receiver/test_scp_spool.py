"""C-STORE into a real receiver over a real socket, checked in its durable spool."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import sqlite3
from pathlib import Path

import rx_dicom
import rx_send
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)

from seriesflow.v1 import series_store_pb2 as pb


def spool_records(data_dir: Path) -> list[pb.SeriesUpdate]:
    with sqlite3.connect(data_dir / "spool" / "spool.sqlite3") as conn:
        rows = conn.execute("SELECT payload FROM entries ORDER BY seq").fetchall()
    return [pb.SeriesUpdate.FromString(row[0]) for row in rows]


def test_stored_instances_are_durable_in_the_spool_when_success_is_answered(
    make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    receiver = make_receiver(tmp_path / "rx")
    spec = rx_dicom.SeriesSpec(patient_name="Doe^Jane")
    datasets = rx_dicom.series(spec, 5)

    answers = rx_send.send_all(receiver.dicom_port, datasets)

    assert [a.status for a in answers] == [0] * 5
    records = spool_records(tmp_path / "rx")
    assert [r.instances[0].sop_instance_uid for r in records] == [
        str(d.SOPInstanceUID) for d in datasets
    ]
    first = records[0]
    assert first.series.series_instance_uid == spec.series_uid
    assert first.study.study_instance_uid == spec.study_uid
    assert first.patient.patient_name == "Doe^Jane"
    assert first.instances[0].transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert first.instances[0].instance_number == 1
    assert first.source.calling_ae_title == "TESTSCU"
    # The first instance of the series carries the representative header, without pixels.
    assert '"0020000E"' in first.representative_header_json
    assert "7FE00010" not in first.representative_header_json
    assert not records[1].representative_header_json


def test_echo_is_answered(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver()
    assoc = rx_send.associate(receiver.dicom_port)
    try:
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
