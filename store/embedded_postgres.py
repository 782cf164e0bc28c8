"""The embedded real PostgreSQL (pgserver) used when no database URL is configured.

pgserver runs PostgreSQL 16 from a wheel, listening on a Unix socket only, with its data in
a folder that survives restarts. Started again on the same folder, it reuses the data (and
a server still running from a killed earlier run).
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import warnings
from pathlib import Path

# pgserver asks platformdirs for a runtime folder at import; without XDG_RUNTIME_DIR (CI,
# containers, cron) platformdirs warns and falls back to /tmp/runtime-UID, which is fine.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", module="platformdirs")

import pgserver  # noqa: E402
import pgserver._commands  # noqa: E402
import psycopg  # noqa: E402

_log = logging.getLogger(__name__)

DATABASE_NAME = "seriesflow"


class EmbeddedPostgres:
    """A running embedded PostgreSQL; `url` is a libpq URI for the seriesflow database."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        try:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                f"cannot create the data folder {self.pgdata.parent}"
                f" ({exc.strerror or exc}); set SERIESFLOW_DATA_DIR (or --data-dir) to a"
                " writable folder"
            ) from exc
        _claim(self.pgdata)
        # cleanup_mode=None: we stop it ourselves in stop(), not from an atexit hook that a
        # child process could trigger.
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            self.pgdata, cleanup_mode=None
        )
        self._ensure_database()
        self.url = self._server.get_uri(DATABASE_NAME)
        _log.info("embedded PostgreSQL running", extra={"fields": {"pgdata": str(self.pgdata)}})

    def _ensure_database(self) -> None:
        with psycopg.connect(self._server.get_uri(), autocommit=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if found is None:
                conn.execute(f"CREATE DATABASE {DATABASE_NAME}")

    def stop(self) -> None:
        """Stop the server cleanly (a fast shutdown: open sessions are rolled back)."""
        pg_ctl = pgserver._commands.pg_ctl  # type: ignore[attr-defined]
        if (self.pgdata / "postmaster.pid").exists():
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user)
        else:  # stopped behind our back (an operator, the OOM killer): nothing to stop
            _log.warning("embedded PostgreSQL was not running at stop")
        _release(self.pgdata)
        # pgserver caches one handle per folder and registers an exit hook for it; forget
        # both so a later start in this process gets a fresh handle.
        atexit.unregister(self._server._cleanup)
        self._server.global_process_id_list.get_and_remove(os.getpid())
        pgserver.PostgresServer._instances.pop(  # type: ignore[attr-defined]
            self.pgdata, None
        )
        _log.info("embedded PostgreSQL stopped")


# pgdata -> the open lock file, for the folders this process owns. One owner per folder:
# a second `seriesflow run` on the same data folder would otherwise share the first one's
# PostgreSQL and, failing on its ports, stop it on the way out. The kernel drops the lock
# when its process dies, so a server left running by a killed run is still reused.
_OWNED: dict[Path, int] = {}


def _claim(pgdata: Path) -> None:
    if pgdata in _OWNED:  # this process already owns it (a restart in the same process)
        return
    lock = pgdata.parent / "postgres.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(
            f"the data folder {pgdata.parent} is in use by another running seriesflow"
            " (its embedded PostgreSQL); stop that one first, or set SERIESFLOW_DATA_DIR"
            " (or --data-dir) to another folder"
        ) from None
    _OWNED[pgdata] = fd


def _release(pgdata: Path) -> None:
    fd = _OWNED.pop(pgdata, None)
    if fd is not None:
        os.close(fd)
