"""Bearer tokens from a file, re-read when it changes: who may store over STOW-RS.

The semantics of the store's token files (store.auth), which the receiver cannot import
(tests/test_import_rules.py): one token a line, blank and `#` lines skipped, compared as
SHA-256 digests in constant time against every token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path

_log = logging.getLogger(__name__)

_RECHECK_SECONDS = 1.0


class TokenFile:
    """Tokens allowed to store, one a line (`#` comments), compared as SHA-256 digests in
    constant time; re-read when the file changes (inode, size or mtime, checked at most
    once a second), so a rotated Kubernetes Secret needs no restart. The semantics of the
    store's token files (store.auth); a file unreadable later keeps its last tokens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._signature = self._stat()  # raises OSError at start: the receiver stops
        self._digests = _parse_tokens(path.read_text(encoding="utf-8"))

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def allows(self, token: str) -> bool:
        presented = hashlib.sha256(token.encode()).digest()
        found = False
        for digest in self._current():  # no early exit: timing tells nothing
            found |= hmac.compare_digest(presented, digest)
        return found

    def _current(self) -> list[bytes]:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= _RECHECK_SECONDS:
                self._checked = now
                try:
                    signature = self._stat()
                    if signature != self._signature:
                        self._digests = _parse_tokens(self.path.read_text(encoding="utf-8"))
                        self._signature = signature
                        _log.info("STOW-RS token file re-read")
                except (OSError, UnicodeDecodeError) as exc:
                    _log.warning(
                        "STOW-RS token file unreadable; keeping its previous tokens",
                        extra={"fields": {"error": str(exc)}},
                    )
            return self._digests


def _parse_tokens(text: str) -> list[bytes]:
    lines = (line.strip() for line in text.splitlines())
    return [hashlib.sha256(t.encode()).digest() for t in lines if t and not t.startswith("#")]
