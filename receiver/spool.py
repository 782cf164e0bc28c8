"""The durable spool: every accepted instance is kept here until the store acks it.

One SQLite database in WAL mode under data_dir/spool. Writes go through one writer thread
that commits whatever has queued up in one transaction ("group commit"), so any number of
associations share each fsync; an instance's `append_later` future completes only after its
commit, which is what lets the SCP answer C-STORE success (contract 1).

Entries move through three states: pending (update_id NULL), assigned to an update
(update_id set, sent or about to be), and gone (retired after the store's ack, or moved to
the dead-letter table when the store rejects the update as invalid).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

# Bytes counted per entry beyond its payload: row and index overhead, roughly.
ENTRY_OVERHEAD = 96
_MAX_BATCH = 1024
# Free space a probe must find before the spool counts as writable again: a typical instance.
_PROBE_BYTES = 1024 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    received_at REAL NOT NULL,
    nbytes INTEGER NOT NULL,
    update_id TEXT,
    completion INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_update_id ON entries (update_id);
-- One row, rewritten by probe(): a write that needs space, to see the disk is usable again.
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, written_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    update_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    series_uid TEXT NOT NULL,
    num_instances INTEGER NOT NULL,
    error_kind TEXT NOT NULL,
    error_field TEXT NOT NULL,
    error_message TEXT NOT NULL,
    payload BLOB NOT NULL
);
-- Previews to render: the representative instance of a flushed series group, whose file
-- is kept (receiver.previews) until the store has acked its preview.
CREATE TABLE IF NOT EXISTS preview_jobs (
    seq INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class SpoolError(Exception):
    """Base of the spool's errors."""


class SpoolFull(SpoolError):
    """The pending entries reached spool_max_bytes; the sender should retry later (0xA700)."""


class SpoolUnavailable(SpoolError):
    """The spool could not write (disk full, I/O error, closed); retry later (0xA700)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    seq: int
    series_uid: str
    received_at: float
    nbytes: int
    update_id: str | None
    completion: int  # the update's CompletionReason value, once assigned


@dataclasses.dataclass(frozen=True)
class PreviewJob:
    """A preview to render from the kept file of entry `seq` (see receiver.previews)."""

    seq: int
    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    created_at: float


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    update_id: str
    created_at: float
    series_uid: str
    num_instances: int
    error_kind: str
    error_field: str
    error_message: str
    payload: bytes


_Op = tuple[Callable[[sqlite3.Connection], Any], "concurrent.futures.Future[Any] | None"]


class Spool:
    """The spool database and its group-commit writer thread."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.path = directory / "spool.sqlite3"
        self.max_bytes = max_bytes
        self._ops: queue.Queue[_Op | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending_bytes = 0
        self._pending_count = 0
        self._readers = threading.local()
        self._writer: threading.Thread | None = None
        self._closed = False
        self.last_commit_ok = True
        self._outage_since = 0.0  # monotonic time of the first failed commit of an outage
        self._failed_commits = 0
        self.last_progress = time.monotonic()

    # -- life cycle -----------------------------------------------------------------

    def open(self) -> list[Entry]:
        """Create or recover the spool; return every entry still waiting for an ack."""
        self.directory.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.executescript(_SCHEMA)
        rows = conn.execute(
            "SELECT seq, series_uid, received_at, nbytes, update_id, completion "
            "FROM entries ORDER BY seq"
        ).fetchall()
        entries = [Entry(*row) for row in rows]
        for entry in entries:
            self._pending_bytes += entry.nbytes
            self._pending_count += 1
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="spool-writer", daemon=True
        )
        self._writer.start()
        return entries

    def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        if self._writer is None or self._closed:
            return
        self._closed = True
        self._ops.put(None)
        self._writer.join(timeout=30)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit's WAL append is fsynced, so an ack survives power loss too.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    # -- writes (writer thread) -----------------------------------------------------

    def append_later(
        self, series_uid: str, payload: bytes, received_at: float
    ) -> concurrent.futures.Future[int]:
        """Queue one instance for the next group commit; the future gives its sequence
        number once committed. SpoolFull/SpoolUnavailable are raised now or set on it."""
        nbytes = len(payload) + ENTRY_OVERHEAD
        with self._lock:
            if self._closed:
                raise SpoolUnavailable("the spool is closed (receiver shutting down)")
            if self._pending_bytes + nbytes > self.max_bytes:
                raise SpoolFull(
                    f"spool holds {self._pending_bytes} bytes not yet delivered "
                    f"(limit {self.max_bytes})"
                )
            self._pending_bytes += nbytes
            self._pending_count += 1

        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO entries (series_uid, received_at, nbytes, payload) VALUES (?,?,?,?)",
                (series_uid, received_at, nbytes, payload),
            )
            return int(cursor.lastrowid or 0)

        def release_if_failed(future: concurrent.futures.Future[int]) -> None:
            if future.exception() is not None:
                with self._lock:
                    self._pending_bytes -= nbytes
                    self._pending_count -= 1

        future = self._submit(insert)
        future.add_done_callback(release_if_failed)
        return future

    def assign(self, update_id: str, completion: int, seqs: Sequence[int]) -> None:
        """Record that these entries travel in update `update_id` (kept across restarts).
        Raises SpoolUnavailable if the write failed; then nothing changed."""

        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE entries SET update_id = ?, completion = ? WHERE seq = ?",
                [(update_id, completion, s) for s in seqs],
            )

        self._submit(update).result()

    def retire(self, update_id: str) -> concurrent.futures.Future[None]:
        """The store acked `update_id`: forget its entries. Not waited for: the future
        fails with SpoolUnavailable if the write did (the entries then stay, still
        assigned, for the caller to retire again)."""

        def delete(conn: sqlite3.Connection) -> tuple[int, int]:
            forgotten = self._forget(conn, update_id)
            conn.execute("DELETE FROM entries WHERE update_id = ?", (update_id,))
            return forgotten

        return self._release_when_committed(self._submit(delete))

    def dead_letter(self, letter: DeadLetter) -> None:
        """The store rejected `letter.update_id` as invalid: keep it aside, retire its entries.
        Raises SpoolUnavailable if the write failed; then nothing changed."""

        def move(conn: sqlite3.Connection) -> tuple[int, int]:
            forgotten = self._forget(conn, letter.update_id)
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?,?,?,?,?)",
                dataclasses.astuple(letter),
            )
            conn.execute("DELETE FROM entries WHERE update_id = ?", (letter.update_id,))
            return forgotten

        self._release_when_committed(self._submit(move)).result()

    def probe(self) -> concurrent.futures.Future[None]:
        """Write _PROBE_BYTES to a file beside the database, then commit one row (that is
        not waited for). While writes fail (a full disk) nothing else may try one: the
        receiver is not ready, so no sender connects; a probe that succeeds makes the spool
        writable, and the receiver ready, again. The file because SQLite reuses its WAL's
        space: a commit alone can succeed on a disk still too full for an instance."""
        path = self.directory / "probe.tmp"
        try:
            with open(path, "wb") as file:
                file.write(bytes(_PROBE_BYTES))
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            self.write_failed(exc)
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            failed.set_exception(SpoolUnavailable(f"spool probe failed: {exc}"))
            return failed
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO probe VALUES (1, ?)", (time.time(),))

        return self._submit(write)

    def add_preview_job(self, job: PreviewJob) -> None:
        """Record a preview to render (kept across restarts). Raises SpoolUnavailable if
        the write failed; then nothing changed."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO preview_jobs VALUES (?,?,?,?,?)", dataclasses.astuple(job)
            )

        self._submit(insert).result()

    def finish_preview_job(self, seq: int) -> concurrent.futures.Future[None]:
        """The store acked the preview of `seq`: forget the job (not waited for)."""

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM preview_jobs WHERE seq = ?", (seq,))

        return self._submit(delete)

    def preview_jobs(self) -> list[PreviewJob]:
        rows = self._reader().execute("SELECT * FROM preview_jobs ORDER BY seq").fetchall()
        return [PreviewJob(*row) for row in rows]

    def records(self, seqs: Iterable[int]) -> dict[int, bytes]:
        """The payloads of these entries by sequence (missing ones left out)."""
        wanted = list(seqs)
        found: dict[int, bytes] = {}
        conn = self._reader()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for seq, payload in conn.execute(
                f"SELECT seq, payload FROM entries WHERE seq IN ({marks})", chunk
            ):
                found[seq] = payload
        return found

    def delete_dead_letter(self, update_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM dead_letters WHERE update_id = ?", (update_id,))

        self._submit(delete).result()

    def _forget(self, conn: sqlite3.Connection, update_id: str) -> tuple[int, int]:
        """(entries, bytes) of `update_id`, to release once their deletion is committed."""
        row = conn.execute(
            "SELECT count(*), coalesce(sum(nbytes), 0) FROM entries WHERE update_id = ?",
            (update_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def _release_when_committed(
        self, future: concurrent.futures.Future[tuple[int, int]]
    ) -> concurrent.futures.Future[None]:
        """The pending totals drop only after the commit: a rolled-back delete (disk full)
        leaves the entries and their bytes counted, so retrying it counts them once."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def release(committed: concurrent.futures.Future[tuple[int, int]]) -> None:
            error = committed.exception()
            if error is not None:
                done.set_exception(error)
                return
            count, nbytes = committed.result()
            with self._lock:
                self._pending_count -= count
                self._pending_bytes -= nbytes
            done.set_result(None)

        future.add_done_callback(release)
        return done

    def _submit(
        self, operation: Callable[[sqlite3.Connection], Any], wait: bool = True
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(SpoolUnavailable("the spool is closed"))
            return future
        self._ops.put((operation, future))
        return future

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            first = self._ops.get()
            batch: list[_Op] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            # Take everything queued meanwhile: one commit (one fsync) for all of it.
            while len(batch) < _MAX_BATCH:
                try:
                    op = self._ops.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stopping = True
                else:
                    batch.append(op)
            if batch:
                self._commit(conn, batch)
            self.last_progress = time.monotonic()
        conn.close()

    def write_failed(self, error: BaseException) -> None:
        """A write to the spool's volume failed (a commit here, or an instance file beside
        the database): not writable, so not ready, until a commit succeeds again (the
        flusher probes). Logged once per outage: a full disk fails every write until space
        returns, and senders and the flusher keep trying."""
        if self.last_commit_ok:
            self._outage_since = time.monotonic()
            _log.warning(
                "spool write failed (disk full or I/O error); answering 0xA700 and "
                "retrying delivery until it works again",
                extra={"fields": {"error": str(error), "spool": str(self.path)}},
            )
        self.last_commit_ok = False
        self._failed_commits += 1

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for operation, _ in batch:
                results.append(operation(conn))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.write_failed(exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for _, future in batch:
                if future is not None:
                    future.set_exception(SpoolUnavailable(f"spool write failed: {exc}"))
            return
        if not self.last_commit_ok:
            _log.info(
                "spool writable again",
                extra={
                    "fields": {
                        "failed_commits": self._failed_commits,
                        "outage_seconds": round(time.monotonic() - self._outage_since, 3),
                    }
                },
            )
            self._failed_commits = 0
        self.last_commit_ok = True
        for (_, future), result in zip(batch, results, strict=True):
            if future is not None:
                future.set_result(result)

    # -- reads (any thread) ---------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            self._readers.conn = conn
        return conn

    def payloads(self, seqs: Iterable[int]) -> list[bytes]:
        """The payloads of these entries, in the order given (missing ones skipped)."""
        wanted = list(seqs)
        found = self.records(wanted)
        return [found[s] for s in wanted if s in found]

    def dead_letters(self, update_ids: Sequence[str] = ()) -> list[DeadLetter]:
        conn = self._reader()
        if update_ids:
            marks = ",".join("?" * len(update_ids))
            rows = conn.execute(
                f"SELECT * FROM dead_letters WHERE update_id IN ({marks}) ORDER BY created_at",
                list(update_ids),
            ).fetchall()
        else:
            rows = conn.execute("SELECT * FROM dead_letters ORDER BY created_at").fetchall()
        return [DeadLetter(*row) for row in rows]

    def count_dead_letters(self) -> int:
        return int(self._reader().execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    # -- gauges ---------------------------------------------------------------------

    def stats(self) -> tuple[int, int, float]:
        """(pending instances, pending bytes, age in seconds of the oldest pending entry)."""
        with self._lock:
            count, nbytes = self._pending_count, self._pending_bytes
        # seq grows with arrival, so the lowest seq is the oldest entry (an index lookup).
        row = (
            self._reader()
            .execute("SELECT received_at FROM entries ORDER BY seq LIMIT 1")
            .fetchone()
        )
        oldest = None if row is None else float(row[0])
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return count, nbytes, age

    def writable(self) -> bool:
        alive = self._writer is not None and self._writer.is_alive() and not self._closed
        return alive and self.last_commit_ok
