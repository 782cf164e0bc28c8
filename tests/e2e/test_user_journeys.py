"""What a hospital IT engineer does on day one, end to end: `seriesflow run`, then
`seriesflow send` of a folder as archives hold them (with a bare dataset that has no
DICOM file header, a DICOMDIR and a text file), send it again, read the metrics, and
check that no patient name or ID leaked into the logs or a metric label."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, require_tool
from dicom_files import WrittenSeries, ct_instance, write_study
from pydicom import dcmwrite
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from test_run import (
    _environment,
    expected_counts,
    ports,  # noqa: F401  (fixture)
    start_service,
    stop_service,
    wait_for_series,
)
from test_send import RecordingScp, seriesflow

PATIENT_ID = "PHI-ID-73914"
PATIENT_NAME = "Privatperson^Erika"
DUPLICATES = 'seriesflow_store_instances_total{result="duplicate"}'


def _seriesflow_send(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seriesflow", "send", str(folder), "--jobs", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} missing"
    return float(match.group(1))


def _send_to_scp(*paths: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """`seriesflow send PATHS` to a recording SCP: the result and what arrived."""
    scp = RecordingScp()
    try:
        result = seriesflow("send", *map(str, paths), "--port", str(scp.port))
    finally:
        scp.stop()
    return result, scp.received


def _bare_series(folder: Path, *, implicit: bool = True, little: bool = True) -> WrittenSeries:
    """A one-instance series written as a bare dataset: no preamble, no DICM, no meta."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    ds = ct_instance(study, series, sop, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    del ds.file_meta
    path = folder / f"bare_{int(implicit)}{int(little)}.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, implicit_vr=implicit, little_endian=little)
    return WrittenSeries(study, series, (sop,), (path,))


def test_send_delivers_bare_datasets_in_their_own_syntax(tmp_path: Path) -> None:
    implicit = _bare_series(tmp_path, implicit=True, little=True)
    big = _bare_series(tmp_path, implicit=False, little=False)
    result, received = _send_to_scp(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 2 of 2 DICOM files (2 success)" in result.stdout
    assert received == {
        implicit.sop_instance_uids[0]: ImplicitVRLittleEndian,
        big.sop_instance_uids[0]: ExplicitVRBigEndian,
    }


def test_send_says_how_many_skipped_files_it_did_not_list(tmp_path: Path) -> None:
    for n in range(23):
        (tmp_path / f"note{n:02}.txt").write_text("not an image\n")
    write_study(tmp_path / "study", [1])
    result, received = _send_to_scp(tmp_path)
    assert len(received) == 1
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped 23 files" in result.stdout
    assert "... and 3 more" in result.stdout


def test_send_a_mixed_folder_twice_then_check_counts_metrics_and_privacy(
    tmp_path: Path,
    pg_tmp_path: Path,
    ports: dict[str, int],  # noqa: F811
) -> None:
    grpcurl = require_tool("grpcurl")
    folder = tmp_path / "archive"
    written = write_study(folder / "study", [3, 2], patient_id=PATIENT_ID)
    written.append(_bare_series(folder))
    (folder / "NOTES.txt").write_text("not an image\n")
    env = _environment(pg_tmp_path / "data", ports)

    service = start_service(pg_tmp_path / "data", ports)
    try:
        first = _seriesflow_send(folder, env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "sent 6 of 6 DICOM files (6 success)" in first.stdout
        assert "skipped 1 files" in first.stdout and "NOTES.txt" in first.stdout
        assert "UserWarning" not in first.stderr
        wait_for_series(grpcurl, service.grpc_address, expected_counts(written))

        again = _seriesflow_send(folder, env)
        assert again.returncode == 0, again.stdout + again.stderr
        # The re-sent series reach the store after the idle timeout, as duplicates.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            store_metrics = _metrics(ports["store_metrics"])
            if _value(store_metrics, DUPLICATES) >= 6:
                break
            time.sleep(0.5)
        wait_for_series(grpcurl, service.grpc_address, expected_counts(written))
        receiver_metrics = _metrics(ports["receiver_metrics"])
    finally:
        code = stop_service(service, signal.SIGTERM)
    assert code == 0

    # The store's instance results add up to what the receiver accepted.
    assert _value(store_metrics, 'seriesflow_store_instances_total{result="new"}') == 6
    assert _value(store_metrics, DUPLICATES) == 6
    accepted = _value(
        receiver_metrics, 'seriesflow_receiver_instances_total{reason="stored",status="success"}'
    )
    assert accepted == 12

    logs = "".join(service.output)
    for secret in (PATIENT_ID, "Privatperson", "Doe^Jane"):
        assert secret not in logs
        assert secret not in store_metrics and secret not in receiver_metrics


def test_send_of_a_mistyped_path_fails_naming_it(tmp_path: Path) -> None:
    write_study(tmp_path / "real", [1])
    result, received = _send_to_scp(tmp_path / "real", tmp_path / "typo")
    assert result.returncode == 2
    assert f"no such file or folder: {tmp_path / 'typo'}" in result.stdout
    assert received == {}  # nothing half-sent


def test_send_of_a_folder_without_dicom_fails(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image\n")
    result = seriesflow("send", str(tmp_path), "--port", "1")
    assert result.returncode == 1
    assert "nothing to send" in result.stdout


def test_echo_to_a_closed_port_prints_one_line_not_library_logs() -> None:
    result = seriesflow("echo", "--port", str(free_port()))
    assert result.returncode == 1
    assert "no association" in result.stdout
    assert "pynetdicom" not in result.stderr


def test_echo_and_send_to_the_wrong_called_ae_say_what_to_check(tmp_path: Path) -> None:
    ae = AE(ae_title="PACS")
    ae.require_called_aet = True  # rejects associations addressed to another AE title
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        write_study(tmp_path, [1])
        echo = seriesflow("echo", "--port", str(port), "--called-ae", "STORESCP")
        sent = seriesflow("send", str(tmp_path), "--port", str(port), "--called-ae", "STORESCP")
    finally:
        server.shutdown()
    assert echo.returncode == 1 and sent.returncode == 1
    for output in (echo.stdout, sent.stdout):
        assert f"localhost:{port} rejected it" in output
        assert "called AE title (STORESCP)" in output


@pytest.mark.parametrize("command", ["run", "store"])
def test_an_unusable_data_folder_stops_the_start_with_one_clear_line(
    tmp_path: Path,
    ports: dict[str, int],  # noqa: F811
    command: str,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    env = _environment(blocker / "data", ports)
    result = subprocess.run(
        [sys.executable, "-m", "seriesflow", command],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot create the data folder {blocker / 'data'}" in result.stderr
    assert "SERIESFLOW_DATA_DIR" in result.stderr


def test_a_second_run_on_the_same_data_folder_is_refused_and_leaves_the_first_serving(
    pg_tmp_path: Path,
    ports: dict[str, int],  # noqa: F811
) -> None:
    grpcurl = require_tool("grpcurl")
    data_dir = pg_tmp_path / "data"
    first = start_service(data_dir, ports)
    try:
        # The same command again (same folder, same ports), as from a second terminal.
        second = subprocess.run(
            [sys.executable, "-m", "seriesflow", "run"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(data_dir, ports),
        )
        assert second.returncode == 1
        assert "is in use by another running seriesflow" in second.stderr
        health = subprocess.run(
            [grpcurl, "-plaintext", first.grpc_address, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert '"SERVING"' in health.stdout, health.stdout + health.stderr
    finally:
        code = stop_service(first, signal.SIGTERM)
    assert code == 0, "".join(first.output)


def test_run_stops_cleanly_when_its_postgresql_was_stopped_behind_its_back(
    pg_tmp_path: Path,
    ports: dict[str, int],  # noqa: F811
) -> None:
    data_dir = pg_tmp_path / "data"
    service = start_service(data_dir, ports)
    try:
        pid_file = data_dir / "postgres" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        deadline = time.monotonic() + 30
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pid_file.exists()
    finally:
        code = stop_service(service, signal.SIGTERM)
    output = "".join(service.output)
    assert "Traceback" not in output
    assert "embedded PostgreSQL was not running at stop" in output
    assert code == 0, output
