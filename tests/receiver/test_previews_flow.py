"""Series previews end to end: real DICOM in, the middle instance chosen, rendered off the
acknowledgement path, stored by the real store; a failing render costs only the preview; a
receiver killed before rendering renders after its restart."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import sqlite3
from pathlib import Path

import grpc
import psycopg
from PIL import Image
from rx_dicom import SeriesSpec, instance
from rx_harness import MakeReceiver, ReceiverProcess, make_receiver, receiver_processes, store  # noqa: F401
from rx_send import associate, send_all
from rx_send import store as c_store
from rx_store import StoreProcess, wait_for

from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

# ruff: noqa: F811


def preview(address: str, series: str) -> pb.SeriesPreview:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SeriesStoreStub(channel)
        return stub.GetSeriesPreview(
            pb.GetSeriesPreviewRequest(series_instance_uid=series), timeout=10
        )


def rendered(address: str, series: str) -> bool:
    try:
        return bool(preview(address, series).png)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # not stored yet
            return False
        raise


def series_row(database_url: str, series: str) -> tuple[str, int, str] | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT status, num_instances, representative_sop_instance_uid FROM series"
            " WHERE series_instance_uid = %s",
            (series,),
        ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]), str(row[2]))


def attribute(address: str, series: str, keyword: str) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SeriesStoreStub(channel)
        answer = stub.GetAttributes(
            pb.GetAttributesRequest(series_instance_uid=series, attributes=[keyword]), timeout=10
        )
    return answer.attributes[0].value


def test_the_middle_instance_is_the_representative_and_its_preview_is_stored(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = SeriesSpec(size=64)
    datasets = [instance(spec, n) for n in range(1, 10)]
    random.Random(7).shuffle(datasets)  # arrival order must not matter
    assert [a.status for a in send_all(receiver.dicom_port, datasets)] == [0] * 9
    middle = next(ds for ds in datasets if ds.InstanceNumber == 5)
    wait_for(lambda: (series_row(database_url, spec.series_uid) or ("",))[0] == "COMPLETE")
    wait_for(lambda: rendered(store.address, spec.series_uid), timeout=60)
    got = preview(store.address, spec.series_uid)
    assert got.sop_instance_uid == middle.SOPInstanceUID
    image = Image.open(io.BytesIO(got.png))
    assert image.format == "PNG" and image.size == (got.width, got.height)
    assert series_row(database_url, spec.series_uid) == ("COMPLETE", 9, middle.SOPInstanceUID)
    assert attribute(store.address, spec.series_uid, "InstanceNumber") == "5"
    # Delivered and acked: nothing of the series is kept on the receiver's disk.
    kept = receiver.config.spool_dir / "kept"
    wait_for(lambda: not any(kept.iterdir()))


def test_a_late_group_nearer_the_middle_replaces_the_representative(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = SeriesSpec(size=32)
    send_all(receiver.dicom_port, [instance(spec, n) for n in range(1, 4)])
    wait_for(lambda: (series_row(database_url, spec.series_uid) or ("",))[0] == "COMPLETE")
    wait_for(lambda: rendered(store.address, spec.series_uid), timeout=60)
    assert attribute(store.address, spec.series_uid, "InstanceNumber") == "2"
    # 4..9 arrive later as a group of their own, whose middle is 6. The whole series' middle
    # is now 5: 6 is one rank from it, the stored 2 three ranks, so 6 takes over.
    send_all(receiver.dicom_port, [instance(spec, n) for n in range(4, 10)])
    wait_for(lambda: attribute(store.address, spec.series_uid, "InstanceNumber") == "6")
    six = series_row(database_url, spec.series_uid)
    assert six is not None and six[:2] == ("COMPLETE", 9)
    wait_for(lambda: preview(store.address, spec.series_uid).sop_instance_uid == six[2], timeout=60)


def test_a_series_whose_preview_cannot_render_still_completes_with_exact_counts(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = SeriesSpec(size=16)
    datasets = [instance(spec, n) for n in range(1, 4)]
    for ds in datasets:
        ds.PixelData = b"\x01\x02\x03"  # far shorter than 16 x 16 x 2 bytes: undecodable
    assert [a.status for a in send_all(receiver.dicom_port, datasets)] == [0, 0, 0]
    wait_for(
        lambda: (
            series_row(database_url, spec.series_uid) is not None
            and series_row(database_url, spec.series_uid)[:2] == ("COMPLETE", 3)
        )
    )  # type: ignore[index]
    wait_for(
        lambda: preview(store.address, spec.series_uid).failure_reason not in ("", "pending"),
        timeout=60,
    )
    got = preview(store.address, spec.series_uid)
    assert not got.png and got.failure_reason in ("undecodable", "failed")
    assert (
        receiver.metrics.registry.get_sample_value(
            "seriesflow_receiver_previews_total", {"result": got.failure_reason}
        )
        == 1
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _jobs(spool_dir: Path) -> int:
    with sqlite3.connect(spool_dir / "spool.sqlite3") as conn:
        return int(conn.execute("SELECT count(*) FROM preview_jobs").fetchone()[0])


def test_a_preview_not_rendered_when_the_receiver_was_killed_is_rendered_after_restart(
    tmp_path: Path,
    store: StoreProcess,
    database_url: str,
    receiver_processes: list[ReceiverProcess],
) -> None:
    receiver = ReceiverProcess(tmp_path / "rx", store.address, previews="true")
    receiver_processes.append(receiver)
    receiver.start()
    warm = SeriesSpec(size=16)
    send_all(receiver.dicom_port, [instance(warm, 1)])
    wait_for(lambda: rendered(store.address, warm.series_uid), timeout=60)
    assert receiver.process is not None
    workers = _children(receiver.process.pid)
    assert workers, "the render worker process was not found"
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)  # the next render cannot happen
    try:
        spec = SeriesSpec(size=16)
        assoc = associate(receiver.dicom_port)
        assert all(c_store(assoc, instance(spec, n)).status == 0 for n in (1, 2, 3))
        assoc.release()
        spool_dir = tmp_path / "rx" / "spool"
        wait_for(lambda: _jobs(spool_dir) == 1)
        wait_for(lambda: (series_row(database_url, spec.series_uid) or ("",))[0] == "COMPLETE")
        assert preview(store.address, spec.series_uid).failure_reason == "pending"
        receiver.kill()
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    receiver.start()
    wait_for(lambda: rendered(store.address, spec.series_uid), timeout=60)
    assert preview(store.address, spec.series_uid).sop_instance_uid
    wait_for(lambda: _jobs(spool_dir) == 0)
