"""Wire the receiver together (config -> spool -> tracker -> stream -> SCP) and run it.

Start order follows the data's path backwards, so nothing is accepted before there is
somewhere durable to put it; shutdown goes forwards: stop accepting, finish associations in
flight, flush, close the stream cleanly, close the spool.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
import warnings
from types import FrameType
from typing import TYPE_CHECKING, cast

from pydicom import config as pydicom_config

from seriesflow import logs, settings
from seriesflow.receiver import client, intake
from seriesflow.receiver.admission import Admission, load_credentials
from seriesflow.receiver.bearer import TokenFile
from seriesflow.receiver.config import ReceiverConfig
from seriesflow.receiver.contexts import Policy, Preference
from seriesflow.receiver.find import Finder
from seriesflow.receiver.flusher import Flusher
from seriesflow.receiver.health import HealthServer
from seriesflow.receiver.incoming import Incoming
from seriesflow.receiver.intake import Intake
from seriesflow.receiver.kept import KeptFiles
from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.receiver.server import DicomServer
from seriesflow.receiver.spool import Spool
from seriesflow.receiver.stow import StowServer
from seriesflow.receiver.tls import tls_context
from seriesflow.receiver.tracker import Tracker

if TYPE_CHECKING:
    from seriesflow.receiver.previews import Previewer

_log = logging.getLogger(__name__)

_ASSOCIATION_DRAIN_SECONDS = 10.0
_STREAM_DRAIN_SECONDS = 5.0
_STALL_SECONDS = 30.0


class Receiver:
    """One running receiver; `start()` returns once it listens, `stop()` shuts it down."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self.metrics = ReceiverMetrics()
        self.spool = Spool(config.spool_dir, config.spool_max_bytes)
        self.metrics.spool_limit_bytes.set(config.spool_max_bytes)
        self.tracker = Tracker(
            config.series_idle_timeout,
            config.series_released_grace,
            config.series_max_age,
            adaptive=config.adaptive_idle(),
        )
        self.client = client.StoreClient(
            config.store_address,
            config.stream_window,
            self.metrics,
            channel_credentials=client.credentials(
                config.store_tls_ca, config.store_tls_cert, config.store_tls_key
            ),
            options=client.channel_options(
                config.grpc_keepalive_time, config.grpc_keepalive_timeout
            ),
            token_file=config.store_token_file,
        )
        self.kept = KeptFiles(config.spool_dir / "kept")
        self.previewer = self._previewer() if config.previews else None
        self.flusher = Flusher(
            self.spool,
            self.tracker,
            self.client,
            self.metrics,
            config.receiver_id,
            kept=self.kept,
            previewer=self.previewer,
        )
        self.intake = Intake(
            self.spool,
            self.tracker,
            self.metrics,
            config.ae_title,
            config.receiver_id,
            Incoming(config.spool_dir / "incoming", config.max_instance_bytes),
            self.kept,
        )
        self.dicom: DicomServer | None = None
        self.stow: StowServer | None = None
        self.health: HealthServer | None = None

    def _previewer(self) -> Previewer:
        from seriesflow.receiver.previews import Previewer  # numpy, pydicom's decoders

        config = self.config
        return Previewer(
            self.spool,
            self.kept,
            self.metrics,
            config.receiver_id,
            lambda update: self.flusher.submit_report(update),
            max_side=config.preview_size,
            workers=config.preview_workers,
            timeout=config.preview_timeout,
        )

    @property
    def dicom_port(self) -> int:
        assert self.dicom is not None
        return self.dicom.port

    @property
    def metrics_port(self) -> int:
        assert self.health is not None
        return self.health.port

    def start(self) -> None:
        recovered = self.spool.open()
        self.intake.incoming.open()  # files a crash left were never acknowledged
        jobs = self.spool.preview_jobs()
        if self.previewer is None:  # previews were turned off: forget what is left
            for job in jobs:
                self.spool.finish_preview_job(job.seq).result()
            jobs = []
        # Files of pending entries may still represent their series; those of jobs wait
        # for their render; any other was left by a crash after its group was flushed.
        self.kept.open({e.seq for e in recovered} | {j.seq for j in jobs})
        self.metrics.dead_letters.set(self.spool.count_dead_letters())
        self.flusher.start(recovered)
        if self.previewer is not None:
            self.previewer.start(jobs)
        self._start_dicom()
        self._start_stow()
        self.health = HealthServer(
            self.config.listen_host,
            self.config.receiver_metrics_port,
            self.live,
            self.ready,
            self.refresh_gauges,
            self.metrics.registry,
        )
        self.health.start()
        _log.info(
            "receiver listening",
            extra={
                "fields": {
                    "dicom_port": self.dicom_port,
                    "stow_port": self.stow.port if self.stow is not None else None,
                    "metrics_port": self.metrics_port,
                    "recovered_instances": len(recovered),
                }
            },
        )

    def _start_dicom(self) -> None:
        config = self.config
        credentials = (
            load_credentials(config.user_identity_file) if config.user_identity_file else ()
        )
        admission = Admission(
            config.ae_title,
            config.allowed_calling_ae_titles,
            config.require_called_ae_title,
            credentials,
        )
        policy = Policy(
            accept_unknown_sop_classes=config.accept_unknown_sop_classes,
            accept_unknown_transfer_syntaxes=config.accept_unknown_transfer_syntaxes,
            preference=cast(Preference, config.transfer_syntax_preference),
        )
        self.dicom = DicomServer(
            self.intake,
            config.listen_host,
            config.dicom_port,
            max_associations=config.max_associations,
            admission=admission,
            acse_timeout=config.acse_timeout,
            network_timeout=config.network_timeout,
            ssl_context=tls_context(config.dicom_tls_cert, config.dicom_tls_key),
            max_pending_connections=config.max_pending_connections,
            association_request_timeout=config.association_request_timeout,
            max_associate_request_bytes=config.max_associate_request_bytes,
            policy=policy,
            finder=Finder(  # C-FIND, answered by the store's Query RPC with the read token
                config.store_address,
                config.ae_title,
                channel_credentials=client.credentials(
                    config.store_tls_ca, config.store_tls_cert, config.store_tls_key
                ),
                options=client.channel_options(
                    config.grpc_keepalive_time, config.grpc_keepalive_timeout
                ),
                read_token_file=config.store_read_token_file,
            ),
        )
        self.dicom.start()

    def _start_stow(self) -> None:
        """STOW-RS (receiver.stow) into the same intake, unless SERIESFLOW_STOW_PORT=off."""
        config = self.config
        if config.stow_port is None:
            return
        tokens = TokenFile(config.stow_tokens_file) if config.stow_tokens_file else None
        self.stow = StowServer(
            self.intake,
            config.listen_host,
            config.stow_port,
            max_request_bytes=config.stow_max_request_bytes,
            tokens=tokens,
            calling_ae_title=config.stow_calling_ae_title,
        )
        self.stow.start()

    def _stop_dicom(self) -> None:
        """No new associations; those in flight get a while to finish, then are aborted."""
        if self.dicom is not None:
            self.dicom.stop(_ASSOCIATION_DRAIN_SECONDS)

    def stop(self) -> None:
        if self.stow is not None:
            self.stow.stop()  # requests in flight finish first, as associations do
        self._stop_dicom()
        if self.previewer is not None:
            self.previewer.stop()  # an unrendered preview stays a job for the next start
        self.flusher.stop(_STREAM_DRAIN_SECONDS)
        self.spool.close()
        if self.health is not None:
            self.health.stop()
        _log.info("receiver stopped", extra={"fields": {"pending": self.spool.stats()[0]}})

    # -- health -----------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.dicom is None or not self.dicom.listening:
            return False, "not listening for DICOM"
        if not self.spool.writable():
            return False, "spool not writable"
        return True, "ready"

    def live(self) -> tuple[bool, str]:
        now = time.monotonic()
        if not self.spool.writable() and self.spool.last_commit_ok:
            return False, "spool writer thread stopped"
        if now - self.flusher.last_progress > _STALL_SECONDS:
            return False, "flusher loop stalled"
        return True, "live"

    def refresh_gauges(self) -> None:
        pending, nbytes, age = self.spool.stats()
        self.metrics.spool_pending.set(pending)
        self.metrics.spool_bytes.set(nbytes)
        self.metrics.spool_oldest_age.set(age)
        self.metrics.dead_letters.set(self.spool.count_dead_letters())


def quiet_libraries() -> None:
    # pydicom warns (and logs) about odd values it still reads; those are the senders'
    # business, and its messages may quote values. Our own fallbacks are recorded instead.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    # pydicom checks every value it converts against its VR's rules; we keep values as
    # sent (contract 4) and validate the UIDs ourselves, so that work is pure cost (~20%
    # of parsing a header).
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    intake.tag_pydicom_logs()  # its ERROR lines then name the instance and the sender
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def main(config: ReceiverConfig) -> int:
    """Run until SIGTERM or SIGINT; exit code 0 after a clean shutdown."""
    logs.configure(config.log_level)
    quiet_libraries()
    _log.info("receiver starting", extra={"fields": {"config": settings.describe(config)}})
    receiver = Receiver(config)
    try:
        receiver.start()
    except OSError as exc:
        _log.error(
            "receiver cannot start: a port is taken or the data folder is not writable",
            extra={"fields": {"error": str(exc)}},
        )
        return 1
    except sqlite3.Error as exc:
        # A full disk (SQLite cannot create its shared-memory file) or a damaged spool file:
        # nothing can be accepted without the spool, so say where it is and stop cleanly.
        _log.error(
            "receiver cannot start: the spool cannot be opened; free space on its disk, or "
            "move a damaged spool file aside (its acknowledged instances are in it)",
            extra={"fields": {"spool": str(config.spool_dir), "error": str(exc)}},
        )
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
    _log.info("receiver stopping")
    receiver.stop()
    return 0
