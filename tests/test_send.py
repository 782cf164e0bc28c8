"""`seriesflow send` and `seriesflow echo` against a real Storage SCP on a real socket."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from dicom_files import ct_instance, write_study
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parent.parent


class RecordingScp:
    """A pynetdicom Storage SCP on 127.0.0.1 that keeps what it received."""

    def __init__(self, *, reject_uid_prefix: str | None = None) -> None:
        self.received: dict[str, str] = {}  # SOPInstanceUID -> transfer syntax
        self.calling: set[str] = set()
        self.announced: list[str] = []  # each C-STORE-RQ's AffectedSOPInstanceUID
        self._lock = threading.Lock()
        self._reject_uid_prefix = reject_uid_prefix
        ae = AE(ae_title="STORESCP")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self.port = free_port()
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        with self._lock:
            self.calling.add(event.assoc.requestor.ae_title)
            self.announced.append(str(event.request.AffectedSOPInstanceUID))
            self.received[str(ds.SOPInstanceUID)] = str(event.context.transfer_syntax)
        prefix = self._reject_uid_prefix
        if prefix is not None and str(ds.SOPInstanceUID).startswith(prefix):
            return 0xA900
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture
def scp() -> Iterator[RecordingScp]:
    server = RecordingScp()
    yield server
    server.stop()


def seriesflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seriesflow", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_send_delivers_every_file_in_a_folder_tree(scp: RecordingScp, tmp_path: Path) -> None:
    first = write_study(tmp_path / "a", [3, 2])
    second = write_study(tmp_path / "b" / "deeper", [4])
    result = seriesflow("send", str(tmp_path), "--port", str(scp.port), "--jobs", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = {sop for s in first + second for sop in s.sop_instance_uids}
    assert set(scp.received) == expected
    assert "sent 9 of 9 DICOM files (9 success)" in result.stdout


def test_send_reports_and_skips_files_that_are_not_dicom(scp: RecordingScp, tmp_path: Path) -> None:
    write_study(tmp_path, [2])
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "empty.dcm").write_bytes(b"")
    result = seriesflow("send", str(tmp_path), "--port", str(scp.port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(scp.received) == 2
    assert "skipped 2 files" in result.stdout
    assert "README.txt" in result.stdout and "empty.dcm" in result.stdout


def test_send_keeps_each_file_in_its_own_transfer_syntax(scp: RecordingScp, tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    syntaxes = (ImplicitVRLittleEndian, ExplicitVRBigEndian)
    for number, syntax in enumerate(syntaxes):
        ds = ct_instance(study, series, generate_uid(), transfer_syntax=syntax)
        ds.save_as(tmp_path / f"{number}.dcm", enforce_file_format=True)
    result = seriesflow("send", str(tmp_path), "--port", str(scp.port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(scp.received.values()) == sorted([ImplicitVRLittleEndian, ExplicitVRBigEndian])


def test_send_announces_the_dataset_uid_when_the_file_meta_names_another(
    scp: RecordingScp, tmp_path: Path
) -> None:
    # pydicom's own rtdose.dcm, rtplan.dcm and chrJapMulti.dcm are like this; storescu and
    # dcmsend announce the dataset's SOPInstanceUID, which a receiver checks the data by.
    ds = ct_instance(generate_uid(), generate_uid(), generate_uid())
    ds.save_as(tmp_path / "stale-meta.dcm", enforce_file_format=True)
    raw = (tmp_path / "stale-meta.dcm").read_bytes()
    # Another valid UID of the same length (the meta still parses), never a random cut that
    # could end in a dot.
    stale = ("1.2." + "9" * 64)[: len(str(ds.SOPInstanceUID))]
    (tmp_path / "stale-meta.dcm").write_bytes(
        raw.replace(str(ds.SOPInstanceUID).encode(), stale.encode(), 1)
    )
    result = seriesflow("send", str(tmp_path), "--port", str(scp.port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert scp.announced == [str(ds.SOPInstanceUID)]
    assert list(scp.received) == [str(ds.SOPInstanceUID)]


def test_send_exits_nonzero_and_names_failures(tmp_path: Path) -> None:
    rejecting = RecordingScp(reject_uid_prefix="")
    try:
        write_study(tmp_path, [2])
        result = seriesflow("send", str(tmp_path), "--port", str(rejecting.port))
    finally:
        rejecting.stop()
    assert result.returncode == 1
    assert "2 files failed" in result.stdout
    assert "0xA900" in result.stdout


def test_send_to_a_closed_port_fails_every_file(tmp_path: Path) -> None:
    write_study(tmp_path, [2])
    result = seriesflow("send", str(tmp_path), "--port", str(free_port()))
    assert result.returncode == 1
    assert "association failed" in result.stdout


def test_echo_succeeds_against_a_live_scp(scp: RecordingScp) -> None:
    result = seriesflow("echo", "--port", str(scp.port), "--called-ae", "STORESCP")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success" in result.stdout


def test_echo_fails_clearly_when_nothing_listens() -> None:
    result = seriesflow("echo", "--port", str(free_port()))
    assert result.returncode == 1
    assert "no association" in result.stdout


def test_send_rejects_a_bad_port_naming_the_flag(tmp_path: Path) -> None:
    result = seriesflow("send", str(tmp_path), "--port", "99999")
    assert result.returncode == 2
    assert "--dicom-port='99999'" in result.stderr or "--port" in result.stderr


class ReceiverProcess:
    """`seriesflow receiver` in a child process, on 127.0.0.1; no store needed (the spool
    takes the instances)."""

    def __init__(self, data_dir: Path, **settings_: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SERIESFLOW_DATA_DIR": str(data_dir),
            "SERIESFLOW_LISTEN_HOST": "127.0.0.1",
            "SERIESFLOW_DICOM_PORT": str(self.port),
            "SERIESFLOW_RECEIVER_METRICS_PORT": str(free_port()),
            "SERIESFLOW_STORE_ADDRESS": f"127.0.0.1:{free_port()}",
            **{f"SERIESFLOW_{k.upper()}": v for k, v in settings_.items()},
        }
        self.log = data_dir.parent / "receiver.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "seriesflow", "receiver"], env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
RETIRED_JPEG = "1.2.840.10008.1.2.4.52"  # JPEG extended (processes 3 & 5), retired


def _refused_files(folder: Path) -> tuple[Path, Path]:
    study, series = generate_uid(), generate_uid()
    private = ct_instance(study, series, generate_uid())
    private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = SIEMENS_CSA_NON_IMAGE
    del private.PixelData
    private.save_as(folder / "private.dcm", enforce_file_format=True)
    jpeg = ct_instance(study, series, generate_uid())
    jpeg.file_meta.TransferSyntaxUID = RETIRED_JPEG
    jpeg.PixelData = encapsulate([b"\xff\xd8" + bytes(30) + b"\xff\xd9"])
    jpeg["PixelData"].VR = "OB"
    jpeg.save_as(folder / "jpeg.dcm", enforce_file_format=True)
    return folder / "private.dcm", folder / "jpeg.dcm"


def test_send_names_the_sop_classes_and_syntaxes_the_receiver_refused(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "rx", accept_unknown_sop_classes="false")
    try:
        files = tmp_path / "files"
        good = write_study(files, [2])
        _refused_files(files)
        result = seriesflow("send", str(files), "--port", str(receiver.port))
        only_refused = tmp_path / "refused"
        only_refused.mkdir()
        _refused_files(only_refused)
        alone = seriesflow("send", str(only_refused), "--port", str(receiver.port))
    finally:
        receiver.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "sent 2 of 4 DICOM files (2 failure, 2 success)" in out
    assert "the receiver refused 2 of the SOP class / transfer syntax pairs:" in out
    assert (
        f"SOP class {SIEMENS_CSA_NON_IMAGE} in 1.2.840.10008.1.2.1 (Explicit VR Little Endian):"
        " refused by the receiver: SOP class not supported (abstract syntax not supported)"
    ) in out
    assert (
        "SOP class 1.2.840.10008.5.1.4.1.1.2 (CT Image Storage) in "
        f"{RETIRED_JPEG} (JPEG Extended (Process 3 and 5)): refused by the receiver:"
        " transfer syntax not supported"
    ) in out
    assert "2 files failed:" in out
    assert f"private.dcm: not sent: SOP class {SIEMENS_CSA_NON_IMAGE}" in out
    assert len(good[0].sop_instance_uids) == 2
    # Every context refused: pynetdicom aborts the association, and send still says why.
    assert alone.returncode == 1
    assert "nothing answered" not in alone.stdout
    assert "the receiver refused 2 of the SOP class / transfer syntax pairs:" in alone.stdout
    assert "sent 0 of 2 DICOM files" in alone.stdout
