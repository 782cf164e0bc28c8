"""`seriesflow run`: the local all-in-one.

Starts (unless SERIESFLOW_DATABASE_URL is set) the embedded PostgreSQL in the data folder,
migrates it to head, then runs `seriesflow store` and `seriesflow receiver` as child
processes — the same commands the containers run — and supervises them. SIGINT or SIGTERM
stops the receiver first (so it stops accepting and its spool is closed cleanly), then the
store, then PostgreSQL, and exits 0. Children are in their own session, so a Ctrl-C in the
terminal reaches only this supervisor, which controls the order; if the supervisor itself
is killed, the kernel sends them SIGTERM (PR_SET_PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from types import FrameType

from seriesflow import settings
from seriesflow.cli import migrate
from seriesflow.receiver.config import ReceiverConfig
from seriesflow.store import database, probe
from seriesflow.store.config import StoreConfig

_log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def flag_environment(args: argparse.Namespace) -> dict[str, str]:
    """The flags given on the command line, as the SERIESFLOW_* variables the children read."""
    return {
        settings.env_name(name): str(value)
        for name, value in vars(args).items()
        if value is not None
        and name not in ("command",)
        and not name.startswith("receiver_command")
    }


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _probe_host(listen_host: str) -> str:
    return "127.0.0.1" if listen_host in ("0.0.0.0", "", "::") else listen_host


class _Children:
    """The store and receiver processes, started and stopped in a fixed order."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._environment = dict(environment)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str) -> None:
        self.processes[role] = subprocess.Popen(
            [sys.executable, "-m", "seriesflow", role],
            env=self._environment,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        _log.info("started", extra={"fields": {"role": role, "pid": self.processes[role].pid}})

    def exited(self) -> tuple[str, int] | None:
        for role, process in self.processes.items():
            code = process.poll()
            if code is not None:
                return role, code
        return None

    def stop(self) -> None:
        # Receiver first: it must stop accepting before the store it delivers to goes away.
        for role in ("receiver", "store"):
            process = self.processes.get(role)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                _log.error("did not stop in time; killing", extra={"fields": {"role": role}})
                process.kill()
                process.wait()


def _receiver_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_until(check: Callable[[], bool], children: _Children, stopping: threading.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and not stopping.is_set():
        if check():
            return True
        if children.exited() is not None:
            return False
        time.sleep(0.2)
    return False


def main(
    store_config: StoreConfig, receiver_config: ReceiverConfig, flags: Mapping[str, str]
) -> int:
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        _log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        url, stop_database = database.resolve_url(store_config)
    except Exception as exc:  # the embedded PostgreSQL: a folder, initdb, its start
        _log.error("cannot start the embedded PostgreSQL", extra={"fields": {"error": str(exc)}})
        return 1
    store_config = dataclasses.replace(store_config, database_url=url)
    environment = {**os.environ, **flags, settings.env_name("database_url"): url}
    # The receiver delivers to the store this command runs, wherever its port was moved,
    # unless a store address was given explicitly.
    environment.setdefault(
        settings.env_name("store_address"),
        f"{_probe_host(store_config.listen_host)}:{store_config.grpc_port}",
    )
    # With tokens on, the receiver authenticates to this store with its write token (the
    # first line of the write tokens file) unless it was given a token file of its own.
    if store_config.auth_mode == "token" and store_config.grpc_write_tokens_file is not None:
        environment.setdefault(
            settings.env_name("store_token_file"), str(store_config.grpc_write_tokens_file)
        )
    children = _Children(environment)
    try:
        if migrate.main(store_config) != 0:
            return 1
        embedded = stop_database is not None
        return _supervise(store_config, receiver_config, children, stopping, embedded)
    finally:
        children.stop()
        if stop_database is not None:
            stop_database()
        _log.info("stopped")


def _supervise(
    store_config: StoreConfig,
    receiver_config: ReceiverConfig,
    children: _Children,
    stopping: threading.Event,
    embedded: bool,
) -> int:
    store_host = _probe_host(store_config.listen_host)
    receiver_host = _probe_host(receiver_config.listen_host)
    children.start("store")
    if not _wait_until(
        lambda: probe.serving(f"{store_host}:{store_config.grpc_port}"), children, stopping
    ):
        return 0 if stopping.is_set() else _report_failure(children, "store")
    children.start("receiver")
    ready_url = f"http://{receiver_host}:{receiver_config.receiver_metrics_port}/readyz"
    if not _wait_until(lambda: _receiver_ready(ready_url), children, stopping):
        return 0 if stopping.is_set() else _report_failure(children, "receiver")
    banner = _banner(store_config, receiver_config, store_host, receiver_host, embedded)
    print(banner, flush=True)
    while not stopping.wait(0.5):
        exited = children.exited()
        if exited is not None:
            role, code = exited
            _log.error("exited unexpectedly", extra={"fields": {"role": role, "code": code}})
            return 1
    return 0


def _report_failure(children: _Children, role: str) -> int:
    exited = children.exited()
    why = (
        f"exited with code {exited[1]}" if exited else f"not ready in {READY_TIMEOUT_SECONDS:.0f} s"
    )
    _log.error("failed to start", extra={"fields": {"role": role, "reason": why}})
    return 1


def _banner(
    store_config: StoreConfig,
    receiver_config: ReceiverConfig,
    store_host: str,
    receiver_host: str,
    embedded: bool,
) -> str:
    database_line = (
        f"embedded PostgreSQL in {store_config.data_dir / 'postgres'}"
        if embedded
        else "PostgreSQL at SERIESFLOW_DATABASE_URL"
    )
    grpc_address = f"{store_host}:{store_config.grpc_port}"
    web = f"http://{store_host}:{store_config.store_http_port}"
    stow = (
        f"http://{receiver_host}:{receiver_config.stow_port}/studies"
        if receiver_config.stow_port
        else "off (SERIESFLOW_STOW_PORT)"
    )
    return "\n".join(
        [
            "seriesflow is running (Ctrl-C to stop)",
            f"  DICOM   {receiver_config.ae_title} @ {receiver_host}:{receiver_config.dicom_port}"
            f"  C-STORE, C-FIND ({_completion_text(receiver_config)})",
            f"  gRPC    {grpc_address}   grpcurl -plaintext {grpc_address} list",
            f"  QIDO-RS {web}/studies   API docs {web}/docs",
            f"  STOW-RS {stow}",
            f"  HTTP    {web}/studies/STUDY_UID/previews (series previews)",
            f"  metrics http://{store_host}:{store_config.store_metrics_port}/metrics (store)",
            f"          http://{receiver_host}:{receiver_config.receiver_metrics_port}/metrics"
            " (receiver)",
            f"  data    {database_line}; spool in {receiver_config.data_dir / 'spool'}",
        ]
    )


def _completion_text(config: ReceiverConfig) -> str:
    adaptive = config.adaptive_idle()
    if adaptive is None:
        return f"series complete after {config.series_idle_timeout:g} s idle"
    return (
        f"series complete after an idle wait adapted to each sender, "
        f"{adaptive.min_idle:g}-{adaptive.max_idle:g} s"
    )
