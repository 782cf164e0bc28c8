"""Receivers under test: real ones, in this process, on ephemeral ports under tmp_path."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rx_store import StoreProcess

from receiver.app import Receiver, quiet_libraries
from receiver.config import ReceiverConfig

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
