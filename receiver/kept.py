"""Instance files kept until their series group is flushed, for its representative.

The representative of a series is its middle instance (receiver.representative), which is
known only once the series group is flushed: no rule can tell earlier which instance will
end up in the middle. So each accepted instance's file (already written to the spool
volume as it arrived, receiver.incoming) is moved here instead of being deleted, and lives
until its group is flushed. Then the middle instance's file gives the group's
representative header and, with previews on, becomes a preview job (receiver.previews);
every other file of the group is deleted; a job's file goes once the store acked its
preview. Only disk is used, never memory: the bytes a group holds are those it already
wrote, and they are freed when it is flushed, whether or not the store is reachable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_SUFFIX = ".dcm"


class KeptFiles:
    """The folder of kept instance files, one per spool sequence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self, keep: Iterable[int]) -> int:
        """Create the folder; delete files of sequences not in `keep` (their entries were
        delivered, or their job finished, before a crash). Returns how many were deleted."""
        self.directory.mkdir(parents=True, exist_ok=True)
        wanted = set(keep)
        removed = 0
        for path in self.directory.glob(f"*{_SUFFIX}"):
            stem = path.name.removesuffix(_SUFFIX)
            if not stem.isdigit() or int(stem) not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def path(self, seq: int) -> Path:
        return self.directory / f"{seq}{_SUFFIX}"

    def has(self, seq: int) -> bool:
        return self.path(seq).exists()

    def drop(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            with contextlib.suppress(FileNotFoundError):
                self.path(seq).unlink()


def stored_syntax(transfer_syntax_uid: str) -> str:
    """The syntax of a kept file: a deflated dataset was inflated on its way in."""
    return EXPLICIT_LITTLE if transfer_syntax_uid == DEFLATED else transfer_syntax_uid
