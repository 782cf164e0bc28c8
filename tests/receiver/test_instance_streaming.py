"""Each instance streams into a file as it arrives; memory and output stay bounded.

The dataset's file grows with the fragments sent (inflated on the way for the deflated
syntax) and is gone once the instance is answered; an instance over the size limit is
answered 0xC001 and its bytes are dropped as they arrive; files a crash left are removed
at start; a peer that stops reading its responses is dropped at the network timeout;
pydicom's own ERROR lines name the instance and the sender. After each, a normal series
arrives complete, with exact counts.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import logging
import threading
import time
import zlib
from pathlib import Path

import pytest
import rx_dicom
import rx_send
from rx_dimse import C_ECHO, VERIFICATION, RawAssociation, p_data, pdv, request
from rx_harness import MakeReceiver, ReceiverProcess, make_receiver, store  # noqa: F401
from rx_store import StoreProcess, series_counts, wait_for
from test_disk_full import SmallDisk, small_disk  # noqa: F401 (fixture)

from seriesflow.receiver.app import Receiver
from seriesflow.receiver.incoming import Incoming

C_STORE = 0x0001


def _normal_series(port: int) -> str:
    spec = rx_dicom.SeriesSpec()
    answers = rx_send.send_all(port, rx_dicom.series(spec, 3))
    assert [a.status for a in answers] == [0, 0, 0]
    return spec.series_uid


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.part")) if folder.exists() else []


def _big(spec: rx_dicom.SeriesSpec, number: int) -> tuple[str, bytes]:
    """An instance of a little over 2 MiB (1024 x 1024 x 16 bit), explicit little endian."""
    ds = rx_dicom.instance(spec, number)
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(range(256)) * (1024 * 1024 * 2 // 256)
    return str(ds.SOPInstanceUID), rx_dicom.encode(ds)


def _deflate(raw: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(raw) + compressor.flush()


def _start_store(association: RawAssociation, uid: str, context_id: int = 1) -> None:
    association.command(context_id, request(C_STORE, 1, sop_instance=uid, dataset=True))


def _fragments(association: RawAssociation, data: bytes, context_id: int, last: bool) -> None:
    for start in range(0, len(data), 16000):
        final = last and start + 16000 >= len(data)
        chunk = data[start : start + 16000]
        association.send(p_data(pdv(context_id, 0x02 if final else 0x00, chunk)))


def test_an_instance_streams_into_a_file_that_is_gone_once_it_is_stored(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    incoming = receiver.config.spool_dir / "incoming"
    spec = rx_dicom.SeriesSpec()
    association = RawAssociation(receiver.dicom_port)
    try:
        for context_id, deflate in ((1, False), (7, True)):
            uid, raw = _big(spec, context_id)
            wire = _deflate(raw) if deflate else raw
            half = len(wire) // 2
            _start_store(association, uid, context_id)
            _fragments(association, wire[:half], context_id, last=False)
            # The first half is on disk while the second is not sent yet.
            if deflate:  # inflated on the way: the file holds more than was sent
                wait_for(lambda h=half: sum(p.stat().st_size for p in _parts(incoming)) > h)
            else:
                wait_for(lambda h=half: [p.stat().st_size for p in _parts(incoming)] == [h])
            _fragments(association, wire[half:], context_id, last=True)
            assert association.response().Status == 0x0000
            assert _parts(incoming) == []
        association.release()
    finally:
        association.close()
    normal = _normal_series(receiver.dicom_port)
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 2, normal: 3})


def test_an_instance_over_the_size_limit_gets_0xC001_and_the_association_goes_on(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, max_instance_bytes=1024 * 1024)
    incoming = receiver.config.spool_dir / "incoming"
    spec = rx_dicom.SeriesSpec()
    big_uid, big = _big(spec, 1)
    # A deflate bomb: 2 MiB of zeros deflate to a few KiB, inflate past the limit.
    bomb = rx_dicom.instance(spec, 2)
    bomb.Rows = bomb.Columns = 1024
    bomb.PixelData = bytes(1024 * 1024 * 2)
    bomb_wire = _deflate(rx_dicom.encode(bomb))
    assert len(bomb_wire) < 64 * 1024
    small = rx_dicom.series(spec, 3)
    association = RawAssociation(receiver.dicom_port)
    try:
        _start_store(association, big_uid)
        _fragments(association, big[: 3 * len(big) // 4], 1, last=False)
        time.sleep(0.5)
        assert _parts(incoming) == []  # past the limit nothing is kept, not even on disk
        _fragments(association, big[3 * len(big) // 4 :], 1, last=True)
        answer = association.response()
        assert answer.Status == 0xC001
        assert answer.ErrorComment == "instance larger than the limit of 1 MiB"
        answer = association.store(bomb_wire, str(bomb.SOPInstanceUID), context_id=7)
        assert (answer.Status, answer.ErrorComment) == (
            0xC001,
            "instance larger than the limit of 1 MiB",
        )
        for ds in small:
            answer = association.store(rx_dicom.encode(ds), str(ds.SOPInstanceUID))
            assert answer.Status == 0x0000
        association.release()
    finally:
        association.close()
    normal = _normal_series(receiver.dicom_port)
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 3, normal: 3})
    assert _parts(incoming) == []


def test_files_a_killed_receiver_left_half_written_are_removed_at_start(
    store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    process = ReceiverProcess(tmp_path / "rx", store.address)
    process.start()
    incoming = tmp_path / "rx" / "spool" / "incoming"
    try:
        uid, raw = _big(rx_dicom.SeriesSpec(), 1)
        association = RawAssociation(process.dicom_port)
        _start_store(association, uid)
        _fragments(association, raw[: len(raw) // 2], 1, last=False)
        wait_for(lambda: len(_parts(incoming)) == 1)
        process.kill()
        association.close()
        assert len(_parts(incoming)) == 1  # never acknowledged, left behind
        process.start()
        assert _parts(incoming) == []
        normal = _normal_series(process.dicom_port)
        wait_for(lambda: series_counts(database_url) == {normal: 3})
    finally:
        process.terminate()


def test_a_peer_that_stops_reading_its_responses_is_dropped_at_the_network_timeout(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, network_timeout=2.0)
    association = RawAssociation(receiver.dicom_port, receive_buffer=4096)
    echoes = b"".join(
        p_data(pdv(3, 0x03, request(C_ECHO, n, sop_class=VERIFICATION))) for n in range(1, 200)
    )
    ended: list[BaseException] = []

    def flood() -> None:  # C-ECHO requests without ever reading a response
        association.sock.settimeout(60)
        try:
            while True:
                association.send(echoes)
        except OSError as exc:
            ended.append(exc)

    started = time.monotonic()
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(timeout=45)
    elapsed = time.monotonic() - started
    association.close()
    assert ended and isinstance(ended[0], ConnectionError), ended
    assert elapsed < 30, elapsed  # dropped near the 2 s timeout, not kept open
    normal = _normal_series(receiver.dicom_port)
    wait_for(lambda: series_counts(database_url) == {normal: 3})


def _with_odd_delimiter(raw: bytes) -> bytes:
    """An undefined-length private OB before the patient group whose delimiter is followed
    by a non-zero length: pydicom logs an ERROR for it and reads on."""
    element = b"\x09\x00\x01\x10OB\x00\x00\xff\xff\xff\xff" + b"\x01\x02"
    element += b"\xfe\xff\xdd\xe0" + b"\x01\x00\x00\x00"
    position = raw.index(b"\x10\x00\x10\x00PN")  # (0010,0010) PatientName
    return raw[:position] + element + raw[position:]


def test_pydicom_error_lines_for_an_accepted_instance_name_it_and_its_sender(
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver: Receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    ds = rx_dicom.instance(spec, 1)
    raw = _with_odd_delimiter(rx_dicom.encode(ds))
    with caplog.at_level(logging.ERROR, logger="pydicom"):
        assoc = rx_send.associate(receiver.dicom_port, calling="ODDSCU")
        try:
            answer = rx_send.send_raw(
                assoc, raw, rx_dicom.CT_IMAGE_STORAGE, str(ds.SOPInstanceUID), "1.2.840.10008.1.2.1"
            )
        finally:
            assoc.release()
    assert answer.status == 0x0000
    lines = [r for r in caplog.records if r.name == "pydicom" and r.levelno >= logging.ERROR]
    assert lines, "pydicom logged no ERROR line"
    for line in lines:
        assert line.fields == {  # type: ignore[attr-defined]
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "calling_ae_title": "ODDSCU",
        }
        assert "Doe" not in line.getMessage()
    normal = _normal_series(receiver.dicom_port)
    wait_for(lambda: series_counts(database_url) == {spec.series_uid: 1, normal: 3})


def test_a_deflated_dataset_is_inflated_into_its_file_piece_by_piece(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path / "incoming", max_bytes=1 << 30)
    incoming.open()
    raw = rx_dicom.encode(rx_dicom.instance(rx_dicom.SeriesSpec(), 1)) * 50
    wire = _deflate(raw)
    with incoming.create("1.2.840.10008.1.2.1.99") as instance:
        for start in range(0, len(wire), 1000):
            instance.write(memoryview(wire)[start : start + 1000])
        instance.finish()
        assert (instance.received_bytes, instance.stored_bytes) == (len(wire), len(raw))
        assert instance.path.read_bytes() == raw
    assert list((tmp_path / "incoming").iterdir()) == []  # discarded on exit


def test_a_kept_incoming_file_belongs_to_the_caller(tmp_path: Path) -> None:
    incoming = Incoming(tmp_path / "incoming", max_bytes=1 << 20)
    incoming.open()
    with incoming.create("1.2.840.10008.1.2.1") as instance:
        instance.write(b"DICM bytes")
        instance.finish()
        kept = instance.keep(tmp_path / "preview-source.dcm")
    assert kept.read_bytes() == b"DICM bytes"  # not deleted with the others
    assert list((tmp_path / "incoming").iterdir()) == []


def test_an_instance_whose_file_cannot_be_written_gets_0xA700_and_marks_the_spool_unready(
    small_disk: SmallDisk,
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
) -> None:
    receiver = make_receiver(data_dir=small_disk.path / "rx", store_address=store.address)
    small_disk.fill()  # not one page left: the instance's file write fails (ENOSPC)
    spec = rx_dicom.SeriesSpec()
    uid, raw = _big(spec, 1)
    association = RawAssociation(receiver.dicom_port)
    try:
        answer = association.store(raw, uid)
        association.release()
    finally:
        association.close()
    assert answer.Status == 0xA700
    assert answer.ErrorComment.startswith("incoming file cannot be written")
    assert receiver.ready() == (False, "spool not writable")
    assert _parts(receiver.config.spool_dir / "incoming") == []
    small_disk.free()
    wait_for(lambda: receiver.ready() == (True, "ready"))
    normal = _normal_series(receiver.dicom_port)
    wait_for(lambda: series_counts(database_url) == {normal: 3})
