"""Receivers under test: real ones, in this process, on ephemeral ports under tmp_path."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rx_store import REPO, StoreProcess, free_port

from seriesflow.receiver.app import Receiver, quiet_libraries
from seriesflow.receiver.config import ReceiverConfig

MakeReceiver = Callable[..., Receiver]


def closed_port() -> int:
    """A local port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receiver_config(data_dir: Path, **overrides: Any) -> ReceiverConfig:
    values: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "data_dir": data_dir,
        "dicom_port": 0,
        "receiver_metrics_port": 0,
        "stow_port": 0,
        "store_address": f"127.0.0.1:{closed_port()}",
        "series_idle_timeout": 0.5,
        "series_released_grace": 0.2,
        "receiver_id": "test-receiver",
    }
    values.update(overrides)
    return dataclasses.replace(ReceiverConfig(), **values)


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator[MakeReceiver]:
    quiet_libraries()
    started: list[Receiver] = []

    def make(data_dir: Path | None = None, **overrides: Any) -> Receiver:
        config = receiver_config(data_dir or tmp_path / f"rx{len(started)}", **overrides)
        receiver = Receiver(config)
        receiver.start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in reversed(started):
        receiver.stop()


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[StoreProcess]:
    """The real store (child process) on a fresh, migrated PostgreSQL database."""
    process = StoreProcess(database_url, tmp_path / "store")
    process.start()
    yield process
    process.stop()


class ReceiverProcess:
    """`receiver.app.main` in a child process, so it can be killed with SIGKILL."""

    def __init__(self, data_dir: Path, store_address: str, **settings_: str) -> None:
        self.data_dir = data_dir
        self.dicom_port = free_port()
        self.metrics_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            SERIESFLOW_DATA_DIR=str(data_dir),
            SERIESFLOW_LISTEN_HOST="127.0.0.1",
            SERIESFLOW_DICOM_PORT=str(self.dicom_port),
            SERIESFLOW_RECEIVER_METRICS_PORT=str(self.metrics_port),
            SERIESFLOW_STOW_PORT="0",
            SERIESFLOW_STORE_ADDRESS=store_address,
            SERIESFLOW_SERIES_IDLE_TIMEOUT="0.5",
            SERIESFLOW_SERIES_RELEASED_GRACE="0.2",
            SERIESFLOW_RECEIVER_ID="test-receiver",
            SERIESFLOW_LOG_LEVEL="INFO",
        )
        self.env.update({f"SERIESFLOW_{k.upper()}": v for k, v in settings_.items()})
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-receiver.log"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _RUN_RECEIVER],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited: {self.log.read_text()[-3000:]}")
            if self.http("/readyz")[0] == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"receiver not ready: {self.log.read_text()[-3000:]}")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5
            ) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample (or the sum of a labelled one's samples)."""
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


_RUN_RECEIVER = (
    "import sys\n"
    "from seriesflow import settings\n"
    "from seriesflow.receiver.config import ReceiverConfig\n"
    "from seriesflow.receiver import app\n"
    "sys.exit(app.main(settings.load(ReceiverConfig)))\n"
)


@pytest.fixture
def receiver_processes() -> Iterator[list[ReceiverProcess]]:
    """Receiver child processes a test started; any still running are stopped after it."""
    started: list[ReceiverProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.process.kill()
            process.process.wait()
