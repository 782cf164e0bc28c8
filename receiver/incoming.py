"""Instance bytes on their way in: each C-STORE dataset streams to a file as it arrives.

The DICOM engine writes every P-DATA dataset fragment straight to a file under
spool_dir/incoming/ (deflated datasets are inflated on the way, in bounded steps), so the
receiver's memory does not grow with an instance's size: a 1 GB whole-slide image costs
the event loop one PDU at a time. The header is then read from the first bytes of the
file (receiver.header.parse_file) and the file is deleted once the instance's metadata is
committed or refused, unless a caller keeps it (`IncomingFile.keep`, e.g. to render a
preview later).

Past `max_bytes` an instance stops being written: the rest of its dataset is counted and
dropped, and intake answers it with a failure status (the association goes on).

The files are scratch space, never a record of anything acknowledged (the spool's database
is that): on start, whatever a crash left in the folder is removed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import zlib
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

_log = logging.getLogger(__name__)

DEFLATED = "1.2.840.10008.1.2.1.99"
# Inflating one fragment yields at most this much at a time: a deflate bomb fills the
# file up to the size limit, never memory.
_INFLATE_STEP = 1024 * 1024
_SUFFIX = ".part"


class Incoming:
    """The folder of instances being received; `open()` once at start, then `create()`."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._names = itertools.count(1)

    def open(self) -> int:
        """Create the folder and remove what a previous run left behind (never acked).

        Returns how many leftover files were removed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.directory.glob(f"*{_SUFFIX}"):
            if _writer_alive(leftover):
                continue  # another receiver process sharing the folder is writing it
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        if removed:
            _log.info(
                "removed unfinished incoming instances left by an earlier run",
                extra={"fields": {"files": removed, "folder": str(self.directory)}},
            )
        return removed

    def create(self, transfer_syntax_uid: str) -> IncomingFile:
        """A new, empty file for one dataset sent in `transfer_syntax_uid`."""
        # pid first (see _writer_alive); then this object, in case two share the folder.
        path = self.directory / f"{os.getpid()}-{id(self):x}-{next(self._names)}{_SUFFIX}"
        return IncomingFile(path, transfer_syntax_uid, self.max_bytes)


def _writer_alive(path: Path) -> bool:
    """Whether the process named in the file's name (pid-....part) is running and not us."""
    pid_text = path.name.split("-", 1)[0]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class IncomingFile:
    """One dataset being written; a context manager that discards the file on exit.

    `received_bytes` counts the bytes as sent on the wire, `stored_bytes` what the file
    holds (the inflated dataset for the deflated syntax). After `finish()`, check in this
    order: `too_large`, `write_error`, `inflate_error`; then read the file at `path`.
    """

    def __init__(self, path: Path, transfer_syntax_uid: str, max_bytes: int) -> None:
        self.path = path
        self.transfer_syntax_uid = transfer_syntax_uid
        self.max_bytes = max_bytes
        self.received_bytes = 0
        self.stored_bytes = 0
        self.too_large = False
        self.write_error = ""
        self.inflate_error = ""
        self._kept = False
        self._inflater = (
            zlib.decompressobj(-zlib.MAX_WBITS) if transfer_syntax_uid == DEFLATED else None
        )
        # Unbuffered: every fragment goes to the kernel at once, nothing piles up here.
        self._file: BinaryIO | None = open(path, "wb", buffering=0)  # noqa: SIM115

    @property
    def writing(self) -> bool:
        return self._file is not None

    def write(self, fragment: bytes | memoryview) -> None:
        """Append one dataset fragment (inflating it when deflated). Never raises: a
        failure is recorded and the rest of the dataset is only counted."""
        self.received_bytes += len(fragment)
        if self._file is None:
            return
        if self.received_bytes > self.max_bytes:
            self._stop_too_large()
            return
        if self._inflater is None:
            self._store(fragment)
            return
        try:
            data = self._inflater.decompress(fragment, _INFLATE_STEP)
            self._store(data)
            while self._file is not None and self._inflater.unconsumed_tail:
                data = self._inflater.decompress(self._inflater.unconsumed_tail, _INFLATE_STEP)
                self._store(data)
        except zlib.error as exc:
            self.inflate_error = f"deflated dataset does not inflate: {exc}"
            self._close()

    def finish(self) -> None:
        """The last fragment arrived: flush what inflation still holds, close for writing."""
        if self._file is not None and self._inflater is not None:
            try:
                self._store(self._inflater.flush())
            except zlib.error as exc:
                self.inflate_error = f"deflated dataset does not inflate: {exc}"
        self._close()

    def _store(self, data: bytes | memoryview) -> None:
        if self._file is None or not data:
            return
        if self.stored_bytes + len(data) > self.max_bytes:
            self._stop_too_large()
            return
        try:
            view = memoryview(data)
            while view:  # an unbuffered write may take only part of it
                written = self._file.write(view)
                view = view[written or 0 :]
        except OSError as exc:
            self.write_error = f"incoming file cannot be written: {exc.strerror or exc}"
            self._close()
            return
        self.stored_bytes += len(data)

    def _stop_too_large(self) -> None:
        self.too_large = True
        self._close()
        self._unlink()  # nothing more is written; what was is of no use

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    # -- after the answer ---------------------------------------------------------------

    def keep(self, destination: Path) -> Path:
        """Move the finished file to `destination`, which then belongs to the caller."""
        self._close()
        os.replace(self.path, destination)
        self._kept = True
        return destination

    def discard(self) -> None:
        """Delete the file (idempotent; a kept file is left alone)."""
        self._close()
        if not self._kept:
            self._unlink()

    def _unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> IncomingFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.discard()
