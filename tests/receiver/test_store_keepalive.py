"""The StoreSeries stream stays up while idle: the store permits the receiver's keepalive pings.

A real store process and a real receiver, with the keepalive periods shortened through
their settings (receiver pings every second, store permits one every half second).
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import time
from pathlib import Path

import pytest
import rx_dicom
import rx_send
from rx_harness import MakeReceiver, make_receiver  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_counts, wait_for

from seriesflow.receiver.app import Receiver

_PING_EVERY = 1.0
_IDLE_SECONDS = 9.0  # several keepalive periods


def _reconnects(receiver: Receiver) -> float:
    registry = receiver.metrics.registry
    value = registry.get_sample_value("seriesflow_receiver_stream_reconnects_total")
    assert value is not None
    return value


def _store(
    database_url: str, folder: Path, monkeypatch: pytest.MonkeyPatch, min_time: str
) -> StoreProcess:
    monkeypatch.setenv("SERIESFLOW_GRPC_KEEPALIVE_MIN_TIME", min_time)
    store = StoreProcess(database_url, folder)
    store.start()
    return store


def test_an_idle_stream_survives_several_keepalive_periods_without_a_reconnect(
    make_receiver: MakeReceiver,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store(database_url, tmp_path / "store", monkeypatch, "0.5")
    try:
        receiver = make_receiver(
            store_address=store.address,
            grpc_keepalive_time=_PING_EVERY,
            grpc_keepalive_timeout=5.0,
        )
        first = rx_dicom.SeriesSpec()
        rx_send.send_all(receiver.dicom_port, rx_dicom.series(first, 3))
        wait_for(lambda: series_counts(database_url) == {first.series_uid: 3})
        assert receiver.client.connected

        time.sleep(_IDLE_SECONDS)  # nothing to send: only keepalive pings on the stream

        assert _reconnects(receiver) == 0
        assert receiver.client.connected
        second = rx_dicom.SeriesSpec()
        rx_send.send_all(receiver.dicom_port, rx_dicom.series(second, 4))
        wait_for(lambda: series_counts(database_url) == {first.series_uid: 3, second.series_uid: 4})
        assert _reconnects(receiver) == 0
    finally:
        store.stop()


def test_a_store_that_does_not_permit_the_pings_tears_the_idle_stream_down(
    make_receiver: MakeReceiver,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failure the policy prevents (gRPC's server default: 5 minutes): GOAWAY
    too_many_pings and a reconnect, and still nothing lost."""
    store = _store(database_url, tmp_path / "store", monkeypatch, "300")
    try:
        receiver = make_receiver(
            store_address=store.address,
            grpc_keepalive_time=_PING_EVERY,
            grpc_keepalive_timeout=5.0,
        )
        wait_for(lambda: receiver.client.connected)
        wait_for(lambda: _reconnects(receiver) >= 1, timeout=_IDLE_SECONDS + 5)
        spec = rx_dicom.SeriesSpec()
        rx_send.send_all(receiver.dicom_port, rx_dicom.series(spec, 2))
        wait_for(lambda: series_counts(database_url) == {spec.series_uid: 2})
    finally:
        store.stop()
