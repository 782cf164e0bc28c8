"""STOW-RS into the receiver (receiver.stow): real HTTP clients -> intake -> real store.

dicomweb-client (PyPI) and curl are clients no one here wrote; the other requests are
built by hand to put broken bodies on the wire.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import copy
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import rx_dicom
from conftest import require_tool
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, series_row, wait_for
from rx_tools import Orthanc

from seriesflow.receiver.app import Receiver
from seriesflow.receiver.part10 import NotPart10, split_meta
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

# aiohttp's multipart reader calls its own deprecated unread_data() for parts sent without
# a Content-Length (every client's): its business, not a finding of these tests.
pytestmark = pytest.mark.filterwarnings("ignore:unread_data:DeprecationWarning")

BOUNDARY = "seriesflow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED, REFERENCED, FAILURE_REASON = "00081198", "00081199", "00081197"
SOP_INSTANCE = "00081155"
MIB = 1024 * 1024


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def without_sop_instance_uid(ds: Dataset) -> bytes:
    """A Part 10 file whose meta names an instance its dataset lacks."""
    data = part10(ds)
    stripped = copy.deepcopy(ds)
    del stripped.SOPInstanceUID
    return data[: _meta_end(data)] + rx_dicom.encode(stripped)


def _meta_end(data: bytes) -> int:
    split = split_meta(data, final=True)
    assert split is not None
    return split[1]


def body(parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def post(
    port: int,
    payload: bytes | Iterator[bytes],
    path: str = "/studies",
    content_type: str = CONTENT_TYPE,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, http.client.HTTPMessage, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        connection.request(method, path, body=payload, headers=all_headers)
        answer = connection.getresponse()
        raw = answer.read()
    finally:
        connection.close()
    kind = answer.headers.get("Content-Type", "")
    decoded = json.loads(raw) if raw and "json" in kind else raw
    return answer.status, answer.headers, decoded


def referenced(module: dict[str, Any]) -> list[str]:
    return [item[SOP_INSTANCE]["Value"][0] for item in module.get(REFERENCED, {}).get("Value", [])]


def failures(module: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (item[SOP_INSTANCE].get("Value", [""])[0], item[FAILURE_REASON]["Value"][0])
        for item in module.get(FAILED, {}).get("Value", [])
    ]


def complete(database_url: str, series_uid: str, count: int) -> bool:
    row = series_row(database_url, series_uid)
    return (
        row is not None
        and row["num_instances"] == count
        and row["instance_rows"] == count
        and row["status"] == "COMPLETE"
    )


def has_preview(store: StoreProcess, series_uid: str) -> bool:
    with store.channel() as channel:
        stub = pb_grpc.SeriesStoreStub(channel)
        request = pb.GetSeriesPreviewRequest(series_instance_uid=series_uid)
        try:
            return bool(stub.GetSeriesPreview(request, timeout=10).png)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise


def stow_port(receiver: Receiver) -> int:
    assert receiver.stow is not None
    return receiver.stow.port


# -- the Part 10 file meta ------------------------------------------------------------


def test_file_meta_is_split_from_the_dataset_whatever_the_piece_boundaries() -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    data = part10(ds)
    whole = split_meta(data, final=True)
    assert whole is not None
    meta, offset = whole
    assert meta.transfer_syntax_uid == ExplicitVRLittleEndian
    assert meta.sop_instance_uid == ds.SOPInstanceUID
    assert meta.sop_class_uid == CTImageStorage
    assert data[offset:] == rx_dicom.encode(ds)
    for cut in range(offset):
        assert split_meta(data[:cut], final=False) is None


def test_a_part_without_the_dicm_prefix_is_not_part10() -> None:
    with pytest.raises(NotPart10, match="DICM"):
        split_meta(b"\0" * 128 + b"JUNK" + b"\0" * 64, final=False)
    with pytest.raises(NotPart10, match="shorter"):
        split_meta(b"garbage", final=True)


# -- stored through the same intake ---------------------------------------------------


def test_dicomweb_client_stores_a_series_that_completes_with_exact_count(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, series_idle_timeout=10, stow_port=0)
    spec = rx_dicom.SeriesSpec(patient_name="Web^Stow", patient_id="P-STOW")
    datasets = rx_dicom.series(spec, 7)
    client = DICOMwebClient(url=f"http://127.0.0.1:{stow_port(receiver)}")

    answer = client.store_instances(datasets)

    stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in datasets)
    assert "FailedSOPSequence" not in answer
    # The request ended like a released association: the short grace completes the series,
    # not the 10 s idle wait.
    wait_for(lambda: complete(database_url, spec.series_uid, 7), timeout=8)
    assert series_counts(database_url) == {spec.series_uid: 7}
    listed = [s for s in store.list_series() if s.series_instance_uid == spec.series_uid]
    assert len(listed) == 1 and listed[0].num_instances == 7
    row = series_row(database_url, spec.series_uid)
    assert row is not None
    assert row["patient_name"] == "Web^Stow" and row["completion_reason"] == "RELEASED"
    # The files intake keeps reach the preview renderer as a C-STORE's do.
    wait_for(lambda: has_preview(store, spec.series_uid), timeout=20)


def test_a_batch_with_bad_instances_stores_the_good_ones_and_reports_the_bad(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, stow_port=0)
    spec = rx_dicom.SeriesSpec()
    good = rx_dicom.series(spec, 3)
    no_uid_instance = rx_dicom.instance(spec, 4)
    no_uid = no_uid_instance.SOPInstanceUID
    parts = [
        part10(good[0]),
        without_sop_instance_uid(no_uid_instance),
        part10(good[1]),
        b"this is not DICOM at all" * 20,
        part10(good[2]),
    ]

    status, headers, module = post(stow_port(receiver), body(parts))

    assert status == 202
    assert headers["Content-Type"] == "application/dicom+json"
    assert sorted(referenced(module)) == sorted(ds.SOPInstanceUID for ds in good)
    assert sorted(failures(module)) == sorted([(no_uid, 0xA900), ("", 0xC000)])
    warnings = headers.get_all("Warning") or []
    assert any("SOPInstanceUID is missing" in w for w in warnings)
    assert any("DICM" in w for w in warnings)
    wait_for(lambda: complete(database_url, spec.series_uid, 3), timeout=8)
    assert series_counts(database_url) == {spec.series_uid: 3}


def test_a_request_where_every_instance_fails_is_a_conflict(
    make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    receiver = make_receiver(stow_port=0)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)

    status, _, module = post(stow_port(receiver), body([without_sop_instance_uid(ds)]))

    assert status == 409
    assert failures(module) == [(ds.SOPInstanceUID, 0xA900)]
    assert REFERENCED not in module


def test_an_instance_of_another_study_than_the_url_names_is_refused(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, stow_port=0)
    ours, other = rx_dicom.SeriesSpec(), rx_dicom.SeriesSpec()
    mine = rx_dicom.instance(ours, 1)
    stray = rx_dicom.instance(other, 1)

    status, _, module = post(
        stow_port(receiver), body([part10(mine), part10(stray)]), path=f"/studies/{ours.study_uid}"
    )

    assert status == 202
    assert referenced(module) == [mine.SOPInstanceUID]
    assert failures(module) == [(stray.SOPInstanceUID, 0xA900)]
    wait_for(lambda: complete(database_url, ours.series_uid, 1), timeout=8)
    assert series_counts(database_url) == {ours.series_uid: 1}


def test_a_full_spool_answers_503_with_out_of_resources_for_every_instance(
    make_receiver: MakeReceiver,
) -> None:
    receiver = make_receiver(stow_port=0, spool_max_bytes=1)
    datasets = rx_dicom.series(rx_dicom.SeriesSpec(), 2)

    status, headers, module = post(stow_port(receiver), body([part10(ds) for ds in datasets]))

    assert status == 503
    assert headers["Retry-After"]
    assert sorted(failures(module)) == sorted((ds.SOPInstanceUID, 0xA700) for ds in datasets)


def test_curl_posts_a_multipart_body_from_a_file(
    make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    receiver = make_receiver(stow_port=0)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    path = tmp_path / "body"
    path.write_bytes(body([part10(ds)]))

    url = f"http://127.0.0.1:{stow_port(receiver)}/studies"
    command = ["curl", "-sS", "-X", "POST", "-H", f"Content-Type: {CONTENT_TYPE}"]
    command += ["--data-binary", f"@{path}", "-w", "\n%{http_code}", url]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    text, code = result.stdout.rsplit("\n", 1)
    assert code == "200"
    assert referenced(json.loads(text)) == [ds.SOPInstanceUID]


# -- refused requests -----------------------------------------------------------------


def test_bearer_tokens_from_the_tokens_file_are_required_and_re_read(
    make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    tokens = tmp_path / "stow-tokens"
    tokens.write_text("# modalities allowed to store\ngood-token\n")
    receiver = make_receiver(stow_port=0, stow_tokens_file=tokens)
    port = stow_port(receiver)
    payload = body([part10(rx_dicom.instance(rx_dicom.SeriesSpec(), 1))])

    assert post(port, payload)[0] == 401
    assert post(port, payload, headers={"Authorization": "Bearer wrong"})[0] == 403
    assert post(port, payload, headers={"Authorization": "Bearer good-token"})[0] == 200

    tokens.write_text("rotated-token\n")
    os.utime(tokens, ns=(time.time_ns(), time.time_ns() + 10**9))
    wait_for(lambda: post(port, payload, headers={"Authorization": "Bearer good-token"})[0] == 403)
    assert post(port, payload, headers={"Authorization": "Bearer rotated-token"})[0] == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "application/json",
        f"multipart/related; type=application/dicom+json; boundary={BOUNDARY}",
        f"multipart/form-data; boundary={BOUNDARY}",
    ],
)
def test_other_media_types_are_refused_with_415(
    make_receiver: MakeReceiver, content_type: str
) -> None:
    receiver = make_receiver(stow_port=0)
    payload = body([part10(rx_dicom.instance(rx_dicom.SeriesSpec(), 1))])

    status, _, answer = post(stow_port(receiver), payload, content_type=content_type)

    assert status == 415
    assert "multipart/related" in answer["error"]


@pytest.mark.parametrize(
    "type_parameter", ["application/dicom", '"application/dicom"', "'application/dicom'", None]
)
def test_the_type_parameter_is_accepted_quoted_or_not(
    make_receiver: MakeReceiver, type_parameter: str | None
) -> None:
    receiver = make_receiver(stow_port=0)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    kind = "multipart/related" + (f"; type={type_parameter}" if type_parameter else "")

    status, _, module = post(
        stow_port(receiver), body([part10(ds)]), content_type=f'{kind}; boundary="{BOUNDARY}"'
    )

    assert status == 200
    assert referenced(module) == [ds.SOPInstanceUID]


def test_a_body_over_the_request_limit_is_refused_with_413(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver(stow_port=0, stow_max_request_bytes=64 * 1024)
    datasets = rx_dicom.series(rx_dicom.SeriesSpec(size=64), 20)  # 8 KiB of pixels each
    payload = body([part10(ds) for ds in datasets])
    assert len(payload) > 64 * 1024

    # Announced by Content-Length: refused before the body is read.
    assert post(stow_port(receiver), payload)[0] == 413
    # Chunked, no length announced: refused once the limit is passed.
    status, _, answer = post(
        stow_port(receiver), iter([payload[i : i + 4096] for i in range(0, len(payload), 4096)])
    )
    assert status == 413
    assert "SERIESFLOW_STOW_MAX_REQUEST_BYTES" in answer["error"]


def test_a_body_that_is_not_multipart_is_a_bad_request(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver(stow_port=0)

    status, _, answer = post(stow_port(receiver), b"no boundary anywhere in here\r\n")

    assert status == 400
    assert "multipart" in answer["error"]


def test_other_methods_get_405_and_options_names_post(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver(stow_port=0)
    port = stow_port(receiver)

    status, headers, _ = post(port, b"", method="GET")
    assert status == 405 and headers["Allow"] == "POST, OPTIONS"
    status, headers, _ = post(port, b"", method="OPTIONS", path="/studies/1.2.3")
    assert status == 204 and "POST" in headers["Allow"]


def test_stow_port_off_starts_no_http_server(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver(stow_port=None)
    assert receiver.stow is None


# -- a request larger than memory -----------------------------------------------------


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def _multiframe_body(frames: int, frame_bytes: int) -> tuple[Dataset, int, Iterator[bytes]]:
    """One multi-frame CT as a multipart body, generated piece by piece (never whole)."""
    spec = rx_dicom.SeriesSpec()
    ds = rx_dicom.instance(spec, 1)
    del ds.PixelData
    ds.Rows = ds.Columns = int((frame_bytes // 2) ** 0.5)
    ds.NumberOfFrames = frames
    head = part10(ds)
    pixels = frames * ds.Rows * ds.Columns * 2
    frame = os.urandom(1 * MIB)

    def pieces() -> Iterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield head + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels)
        left = pixels
        while left:
            piece = frame[: min(left, len(frame))]
            left -= len(piece)
            yield piece
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    return ds, pixels, pieces()


def test_a_chunked_request_larger_than_memory_streams_with_bounded_memory(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, stow_port=0, previews=False)
    ds, pixels, pieces = _multiframe_body(frames=150, frame_bytes=2 * MIB)  # 300 MiB
    assert pixels >= 300 * MIB
    before = _vm_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

    status, _, module = post(stow_port(receiver), pieces)

    growth_mib = (_vm_kib("VmHWM") - before) / 1024
    assert status == 200, module
    assert referenced(module) == [ds.SOPInstanceUID]
    assert growth_mib < 64, f"peak memory grew by {growth_mib:.0f} MiB"
    wait_for(lambda: complete(database_url, ds.SeriesInstanceUID, 1), timeout=10)


def test_concurrent_requests_are_separate_associations_for_the_tracker(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address, stow_port=0)
    spec = rx_dicom.SeriesSpec()
    datasets = rx_dicom.series(spec, 12)
    results: list[int] = []

    def send(chunk: list[Dataset]) -> None:
        results.append(post(stow_port(receiver), body([part10(ds) for ds in chunk]))[0])

    threads = [threading.Thread(target=send, args=(datasets[k::3],)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [200, 200, 200]
    wait_for(lambda: complete(database_url, spec.series_uid, 12), timeout=8)
    assert series_counts(database_url) == {spec.series_uid: 12}


def _element(element: int, value: str) -> bytes:
    raw = value.encode() + (b"\0" if len(value) % 2 else b"")
    return struct.pack("<HH2sH", 0x0002, element, b"UI", len(raw)) + raw


def test_a_file_meta_without_media_storage_uids_takes_them_from_the_dataset(
    make_receiver: MakeReceiver,
) -> None:
    receiver = make_receiver(stow_port=0)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    meta = b"\0" * 128 + b"DICM" + _element(0x0010, ExplicitVRLittleEndian)

    status, _, module = post(stow_port(receiver), body([meta + rx_dicom.encode(ds)]))

    assert status == 200
    assert referenced(module) == [ds.SOPInstanceUID]


# -- Orthanc's DICOMweb plugin as the sender ------------------------------------------


class DicomWebOrthanc(Orthanc):
    """A private Orthanc with its DICOMweb plugin, seriesflow's STOW-RS as a server."""

    def __init__(self, binary: str, folder: Path, stow_url: str, token: str) -> None:
        super().__init__(binary, folder, receiver_port=0)
        self.stow_url, self.token = stow_url, token

    def start(self, timeout: float = 30.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "seriesflow-stow-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "Plugins": [ORTHANC_DICOMWEB],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "Servers": {
                    "seriesflow": {
                        "Url": self.stow_url,
                        "HttpHeaders": {"Authorization": f"Bearer {self.token}"},
                    }
                },
            },
        }
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(
            [self.binary, str(config_path)], stdout=log, stderr=log, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.folder / "orthanc.log").read_text()[-2000:])
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise TimeoutError("Orthanc did not answer on its HTTP port")


ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def test_orthanc_dicomweb_plugin_sends_a_study_over_stow_rs(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str, tmp_path: Path
) -> None:
    binary = require_tool("Orthanc")
    assert Path(ORTHANC_DICOMWEB).exists(), "Debian's orthanc-dicomweb is not installed"
    tokens = tmp_path / "stow-tokens"
    tokens.write_text("orthanc-token\n")
    receiver = make_receiver(store_address=store.address, stow_port=0, stow_tokens_file=tokens)
    study_uid = rx_dicom.uid()
    specs = [rx_dicom.SeriesSpec(study_uid=study_uid) for _ in range(2)]
    datasets = rx_dicom.series(specs[0], 6) + rx_dicom.series(specs[1], 4)
    url = f"http://127.0.0.1:{stow_port(receiver)}/"
    orthanc = DicomWebOrthanc(binary, tmp_path / "orthanc", url, "orthanc-token")
    orthanc.start()
    try:
        studies = {orthanc.post("/instances", part10(ds))["ParentStudy"] for ds in datasets}
        assert len(studies) == 1
        request = {"Resources": list(studies), "Synchronous": True}
        orthanc.post("/dicom-web/servers/seriesflow/stow", json.dumps(request).encode())
    finally:
        orthanc.stop()

    expected = {specs[0].series_uid: 6, specs[1].series_uid: 4}
    wait_for(lambda: all(complete(database_url, uid, n) for uid, n in expected.items()))
    assert series_counts(database_url) == expected


def _head_only(port: int, headers: str) -> bytes:
    """Send a request's head announcing a body, and read what comes back before the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: 1000000000\r\n"
                f"Expect: 100-continue\r\n{headers}\r\n"
            ).encode()
        )
        return sock.recv(4096)


def test_a_refused_request_is_answered_before_its_announced_body_is_sent(
    make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    tokens = tmp_path / "stow-tokens"
    tokens.write_text("good-token\n")
    receiver = make_receiver(stow_port=0, stow_tokens_file=tokens)

    assert _head_only(stow_port(receiver), "").startswith(b"HTTP/1.1 401")
    accepted = _head_only(stow_port(receiver), "Authorization: Bearer good-token\r\n")
    assert accepted.startswith(b"HTTP/1.1 100 Continue")


def test_boundaries_longer_than_rfc_2046_allows_are_read(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver(stow_port=0)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    boundary = "b" * 73  # what Orthanc's DICOMweb plugin sends
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'

    status, _, module = post(
        stow_port(receiver), body([part10(ds)], boundary), content_type=content_type
    )

    assert status == 200
    assert referenced(module) == [ds.SOPInstanceUID]


def test_a_client_that_disconnects_mid_instance_leaves_nothing_behind(
    make_receiver: MakeReceiver,
) -> None:
    receiver = make_receiver(stow_port=0)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(size=512), 1)  # 512 KiB of pixels
    payload = body([part10(ds)])
    with socket.create_connection(("127.0.0.1", stow_port(receiver)), timeout=10) as sock:
        sock.sendall(
            (
                "POST /studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode()
            + payload[: len(payload) // 2]
        )
        wait_for(lambda: any(receiver.intake.incoming.directory.glob("*.part")))

    wait_for(lambda: not any(receiver.intake.incoming.directory.glob("*.part")))
    registry = receiver.metrics.registry
    wait_for(lambda: registry.get_sample_value("seriesflow_receiver_associations_active") == 0)
    closed = {"status": "499"}  # the client closed the connection
    answered = registry.get_sample_value("seriesflow_receiver_stow_requests_total", closed)
    assert answered == 1
    assert receiver.spool.stats()[0] == 0


def test_a_body_cut_short_stores_the_instances_before_the_cut_and_refuses_the_cut_one(
    make_receiver: MakeReceiver,
) -> None:
    receiver = make_receiver(stow_port=0)
    whole, cut = rx_dicom.series(rx_dicom.SeriesSpec(size=64), 2)
    payload = body([part10(whole), part10(cut)])
    payload = payload[: payload.rindex(f"--{BOUNDARY}--".encode()) - 1000]  # in its pixels

    status, _, module = post(stow_port(receiver), payload)

    assert status == 202
    assert referenced(module) == [whole.SOPInstanceUID]
    # The cut instance, and the body itself (no closing delimiter).
    assert sorted(failures(module)) == [("", 0xC000), (cut.SOPInstanceUID, 0xC000)]
