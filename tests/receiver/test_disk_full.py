"""A full disk recovers by itself: nothing acknowledged is lost or waits for a restart.

The spool lives on a real, small filesystem that really fills up: a tmpfs mounted with
`size=` under the test's folder (as root here; in CI, where the mount must work, a failure
to mount fails the test instead of skipping it). Filling it with a file makes the kernel
answer ENOSPC, so SQLite's writes fail with SQLITE_FULL exactly as on a full volume; deleting
the file gives the space back. The mount is removed in a `finally`, lazily if still busy.

Each test fills the disk at one delivery step after the instances were acknowledged:
assigning a series to an update, retiring the entries the store acked, keeping an update the
store rejected aside. The receiver is never restarted.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import rx_dicom
import rx_send
from conftest import IN_CI, require_tool
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for
from test_dead_letters import FussyStore, fussy  # noqa: F401 (fixture)

from seriesflow.receiver.app import Receiver
from seriesflow.receiver.metrics import DELIVERY_STEPS

DISK_BYTES = 16 * 1024 * 1024
OUT_OF_RESOURCES = 0xA700


class SmallDisk:
    """A tmpfs of DISK_BYTES at `path`. `fill()` takes every free page but `spare_pages`
    and keeps them taken (a writer that tops the filler up, as another process filling the
    volume would) until `free()` gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def fill(self, spare_pages: int = 0) -> None:
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._top_up(fd, spare_pages)
        assert os.statvfs(self.path).f_bavail == spare_pages
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, args=(fd, spare_pages), daemon=True)
        self._keeper.start()

    def free(self) -> None:
        assert self._keeper is not None
        self.stop_filling()
        self._filler.unlink()

    def stop_filling(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()

    def _keep(self, fd: int, spare_pages: int) -> None:
        try:
            while not self._stop.wait(0.02):
                self._top_up(fd, spare_pages)
        finally:
            os.close(fd)

    def _top_up(self, fd: int, spare_pages: int) -> None:
        # Whole pages only, so the filler stays page-aligned and takes exactly what it asks.
        page = os.statvfs(self.path).f_frsize
        while (free := os.statvfs(self.path).f_bavail - spare_pages) > 0:
            try:
                os.write(fd, bytes(min(free, 256) * page))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return  # something else took the space meanwhile


def _mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines()
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """Ask for it before `make_receiver`, so receivers are stopped before it is unmounted."""
    mount, umount = require_tool("mount"), require_tool("umount")
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    disk = SmallDisk(path)
    try:
        yield disk
    finally:
        disk.stop_filling()
        if subprocess.run([umount, str(path)], capture_output=True).returncode != 0:
            # Still busy (a test failed with files open): detach now, freed once closed.
            subprocess.run([umount, "--lazy", str(path)], check=True)
        assert not _mounted(path)


def until(condition: Callable[[], bool], receiver: Receiver, timeout: float = 30) -> None:
    """wait_for, saying where delivery stands when it times out."""
    try:
        wait_for(condition, timeout=timeout)
    except AssertionError as exc:
        state = {
            "pending": receiver.spool.stats()[0],
            "held": held(receiver),
            "retries": {step: retries(receiver, step) for step in DELIVERY_STEPS},
            "ready": receiver.ready(),
            "store_connected": receiver.client.connected,
        }
        raise AssertionError(f"{exc}; receiver: {state}") from None


def retries(receiver: Receiver, step: str) -> float:
    value = receiver.metrics.registry.get_sample_value(
        "seriesflow_receiver_delivery_retries_total", {"step": step}
    )
    return value or 0.0


def held(receiver: Receiver) -> float:
    return receiver.metrics.registry.get_sample_value("seriesflow_receiver_delivery_held") or 0.0


def assigned_entries(receiver: Receiver) -> int:
    """Spool entries recorded as travelling in an update, read from the spool file itself."""
    with sqlite3.connect(f"file:{receiver.spool.path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT count(*) FROM entries WHERE update_id IS NOT NULL").fetchone()
    return int(row[0])


def statuses(port: int, spec: rx_dicom.SeriesSpec, count: int) -> list[int]:
    return [a.status for a in rx_send.send_all(port, rx_dicom.series(spec, count))]


def test_series_whose_assignment_failed_on_a_full_disk_is_delivered_once_space_returns(
    small_disk: SmallDisk,
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = make_receiver(
        data_dir=small_disk.path / "rx",
        store_address=store.address,
        series_idle_timeout=3.0,
        series_released_grace=3.0,  # time to fill the disk between the acks and the flush
    )
    before = rx_dicom.SeriesSpec()
    assert statuses(receiver.dicom_port, before, 5) == [0] * 5
    until(lambda: series_counts(database_url) == {before.series_uid: 5}, receiver)

    stranded = rx_dicom.SeriesSpec()
    caplog.set_level(logging.INFO, logger="seriesflow.receiver")
    assert statuses(receiver.dicom_port, stranded, 20) == [0] * 20  # acknowledged...
    small_disk.fill()  # ...then the disk fills before the series is assigned to an update

    until(lambda: retries(receiver, "assign") >= 2, receiver)  # first try, then a retry
    assert receiver.spool.stats()[0] == 20  # kept in the spool...
    # ...and tracked for retry, not dropped: the assignment, and the preview job behind it.
    assert held(receiver) == 2
    assert assigned_entries(receiver) == 0
    # While the disk is full, new instances are refused with "out of resources" (retry later).
    refused = rx_send.send_all(receiver.dicom_port, rx_dicom.series(rx_dicom.SeriesSpec(), 3))
    assert [a.status for a in refused] == [OUT_OF_RESOURCES] * 3
    assert all(a.comment for a in refused)  # with an ErrorComment saying why
    assert receiver.ready() == (False, "spool not writable")
    assert series_counts(database_url) == {before.series_uid: 5}

    small_disk.free()

    # No restart: the held assignment goes through and the series reaches PostgreSQL.
    expected = {before.series_uid: 5, stranded.series_uid: 20}
    until(lambda: series_counts(database_url) == expected, receiver)
    until(lambda: receiver.spool.stats()[0] == 0, receiver)
    assert held(receiver) == 0
    assert receiver.ready() == (True, "ready")
    # One WARNING per outage from the spool and one from delivery, however many retries.
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("seriesflow.receiver")
    ]
    assert sorted(r.name for r in warnings) == [
        "seriesflow.receiver.held",
        "seriesflow.receiver.spool",
    ]
    assert retries(receiver, "assign") >= 2

    after = rx_dicom.SeriesSpec()
    assert statuses(receiver.dicom_port, after, 7) == [0] * 7
    expected[after.series_uid] = 7
    until(lambda: series_counts(database_url) == expected, receiver)
    until(lambda: receiver.spool.stats()[0] == 0, receiver)
    assert series_counts(database_url) == expected


def test_entries_the_store_acked_while_the_disk_was_full_are_retired_once_space_returns(
    small_disk: SmallDisk,
    make_receiver: MakeReceiver,
    database_url: str,
    tmp_path: Path,
) -> None:
    store = StoreProcess(database_url, tmp_path / "store")  # not started yet
    receiver = make_receiver(data_dir=small_disk.path / "rx", store_address=store.address)
    try:
        spec = rx_dicom.SeriesSpec()
        assert statuses(receiver.dicom_port, spec, 10) == [0] * 10
        wait_for(lambda: assigned_entries(receiver) == 10)  # flushed, waiting for the store
        small_disk.fill()

        store.start()  # the update goes out, the store acks it, retiring the entries fails
        until(lambda: series_counts(database_url) == {spec.series_uid: 10}, receiver)
        until(lambda: retries(receiver, "retire") >= 1, receiver)
        assert receiver.spool.stats()[0] == 10  # acked, but the spool could not forget them

        small_disk.free()

        until(lambda: receiver.spool.stats()[0] == 0, receiver)  # retired, without a restart
        assert held(receiver) == 0
        assert assigned_entries(receiver) == 0
        after = rx_dicom.SeriesSpec()
        assert statuses(receiver.dicom_port, after, 4) == [0] * 4
        expected = {spec.series_uid: 10, after.series_uid: 4}
        until(lambda: series_counts(database_url) == expected, receiver)
        until(lambda: receiver.spool.stats()[0] == 0, receiver)
        assert series_counts(database_url) == expected  # the first series counted once
    finally:
        store.stop()


def test_update_rejected_while_the_disk_was_full_becomes_a_dead_letter_once_space_returns(
    small_disk: SmallDisk,
    make_receiver: MakeReceiver,
    fussy: tuple[FussyStore, str],
) -> None:
    servicer, address = fussy
    # The first answer to each update is a kind the receiver does not know: it re-sends
    # after a pause, and the disk is filled in that pause; the second answer is INVALID.
    servicer.flaky = True
    rejected = rx_dicom.SeriesSpec()
    servicer.refused.add(rejected.series_uid)
    receiver = make_receiver(data_dir=small_disk.path / "rx", store_address=address)

    assert statuses(receiver.dicom_port, rejected, 3) == [0] * 3
    until(lambda: len(servicer.seen) >= 1, receiver)
    small_disk.fill()

    until(lambda: retries(receiver, "dead_letter") >= 1, receiver)
    assert len(servicer.seen) == 2  # answered INVALID the second time
    assert receiver.spool.count_dead_letters() == 0
    assert receiver.spool.stats()[0] == 3  # still in the spool, not lost

    small_disk.free()

    until(lambda: receiver.spool.count_dead_letters() == 1, receiver)
    until(lambda: receiver.spool.stats()[0] == 0, receiver)
    [letter] = receiver.spool.dead_letters()
    assert (letter.series_uid, letter.num_instances, letter.error_kind) == (
        rejected.series_uid,
        3,
        "invalid",
    )
    assert receiver.metrics.registry.get_sample_value("seriesflow_receiver_dead_letters") == 1
    assert held(receiver) == 0

    # A following normal series is acked complete (this store is the test's, not PostgreSQL).
    servicer.flaky = False
    after = rx_dicom.SeriesSpec()
    assert statuses(receiver.dicom_port, after, 5) == [0] * 5
    until(lambda: receiver.spool.stats()[0] == 0 and len(servicer.seen) == 3, receiver)
    [update] = [u for u in servicer.seen if u.series.series_instance_uid == after.series_uid]
    assert len(update.instances) == 5


def test_receiver_that_only_refused_instances_on_a_full_disk_is_ready_again_unprompted(
    small_disk: SmallDisk,
    make_receiver: MakeReceiver,
    store: StoreProcess,
    database_url: str,
) -> None:
    # Not ready means no sender is routed to it, so no C-STORE would ever show that the
    # disk has space again: the receiver has to find out by itself. One page is left free:
    # each (small) instance's file fits in it, its metadata's commit does not.
    receiver = make_receiver(data_dir=small_disk.path / "rx", store_address=store.address)
    small_disk.fill(spare_pages=1)
    refused = rx_dicom.SeriesSpec()
    assert statuses(receiver.dicom_port, refused, 2) == [OUT_OF_RESOURCES] * 2
    assert receiver.ready() == (False, "spool not writable")
    assert (receiver.spool.stats()[0], held(receiver)) == (0, 0)  # nothing to retry

    small_disk.free()

    until(lambda: receiver.ready() == (True, "ready"), receiver)  # with nothing sent
    after = rx_dicom.SeriesSpec()
    assert statuses(receiver.dicom_port, after, 6) == [0] * 6
    until(lambda: series_counts(database_url) == {after.series_uid: 6}, receiver)
    until(lambda: receiver.spool.stats()[0] == 0, receiver)
    assert series_counts(database_url) == {after.series_uid: 6}
