"""Receiver wiring: configuration errors, calling-AE allow-list, health and metrics."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import logging
import urllib.error
import urllib.request

import pytest
import rx_dicom
import rx_send
from rx_harness import MakeReceiver, make_receiver  # noqa: F401 (fixtures)

from receiver.app import Receiver
from receiver.config import ReceiverConfig
from seriesflow import settings


def get(receiver: Receiver, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{receiver.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SERIESFLOW_DICOM_PORT", "70000"),
        ("SERIESFLOW_SERIES_IDLE_TIMEOUT", "soon"),
        ("SERIESFLOW_SERIES_RELEASED_GRACE", "-1"),
        ("SERIESFLOW_AE_TITLE", "A_TITLE_LONGER_THAN_16"),
        ("SERIESFLOW_SPOOL_MAX_BYTES", "lots"),
        ("SERIESFLOW_ALLOWED_CALLING_AE_TITLES", "OK,BAD\\AE"),
        ("SERIESFLOW_STORE_ADDRESS", "no-port"),
    ],
)
def test_a_bad_setting_fails_at_start_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(settings.ConfigError, match=variable):
        settings.load(ReceiverConfig, {variable: value})


def test_defaults_and_decimal_timeouts() -> None:
    config = settings.load(
        ReceiverConfig,
        {"SERIESFLOW_SERIES_IDLE_TIMEOUT": "0.75", "SERIESFLOW_ALLOWED_CALLING_AE_TITLES": "A,B"},
    )
    assert config.series_idle_timeout == 0.75
    assert config.allowed_calling_ae_titles == frozenset({"A", "B"})
    assert (config.ae_title, config.dicom_port, config.receiver_metrics_port) == (
        "STORESCP",
        6667,
        9102,
    )
    assert config.spool_dir == config.data_dir / "spool"


def test_calling_ae_titles_outside_the_allow_list_are_rejected_logged_and_counted(
    make_receiver: MakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = make_receiver(allowed_calling_ae_titles=frozenset({"MODALITY1"}))

    with caplog.at_level(logging.WARNING, logger="receiver.scp"):
        refused = rx_send.associate(receiver.dicom_port, calling="INTRUDER")
    allowed = rx_send.associate(receiver.dicom_port, calling="MODALITY1")

    assert refused.is_rejected
    assert allowed.is_established
    allowed.release()
    assert any(
        getattr(r, "fields", {}).get("calling_ae_title") == "INTRUDER" for r in caplog.records
    )
    _, metrics = get(receiver, "/metrics")
    assert 'seriesflow_receiver_associations_total{result="rejected"}' in metrics


def test_health_endpoints_and_metrics(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver()
    rx_send.send_all(receiver.dicom_port, rx_dicom.series(rx_dicom.SeriesSpec(), 3))

    assert get(receiver, "/livez") == (200, "live\n")
    assert get(receiver, "/readyz") == (200, "ready\n")
    status, metrics = get(receiver, "/metrics")
    assert status == 200
    for name in (
        "seriesflow_receiver_associations_active",
        "seriesflow_receiver_associations_total",
        'seriesflow_receiver_instances_total{reason="stored",status="success"}',
        "seriesflow_receiver_received_bytes_total",
        'seriesflow_receiver_series_flushed_total{reason="released"}',
        "seriesflow_receiver_spool_pending_instances 3.0",
        "seriesflow_receiver_spool_bytes",
        "seriesflow_receiver_spool_oldest_pending_age_seconds",
        "seriesflow_receiver_stream_reconnects_total",
        "seriesflow_receiver_store_connected 0.0",
        "seriesflow_receiver_series_ack_latency_seconds_bucket",
        "seriesflow_receiver_dead_letters 0.0",
    ):
        assert name in metrics, name
    assert "Doe^Jane" not in metrics and "PAT-1" not in metrics

    receiver.spool.close()  # the spool can no longer take writes
    assert get(receiver, "/readyz")[0] == 503
