"""Receiver wiring: configuration errors, AE title checks, health and metrics."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import json
import logging
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import rx_dicom
import rx_send
from conftest import require_tool
from prometheus_client.utils import floatToGoString
from rx_harness import MakeReceiver, ReceiverProcess, make_receiver  # noqa: F401 (fixtures)

from seriesflow import build_info, settings
from seriesflow.receiver.app import Receiver
from seriesflow.receiver.config import ReceiverConfig


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
        ("SERIESFLOW_REQUIRE_CALLED_AE_TITLE", "maybe"),
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
    assert config.require_called_ae_title is False
    required = settings.load(ReceiverConfig, {"SERIESFLOW_REQUIRE_CALLED_AE_TITLE": "true"})
    assert required.require_called_ae_title is True


def rejected_associations(receiver: Receiver) -> float:
    """seriesflow_receiver_associations_total{result="rejected"} as the receiver reports it.

    Tests compare before and after, so whatever the receiver counted earlier does not matter."""
    _, metrics = get(receiver, "/metrics")
    for line in metrics.splitlines():
        if line.startswith('seriesflow_receiver_associations_total{result="rejected"}'):
            return float(line.split()[-1])
    raise AssertionError("seriesflow_receiver_associations_total{result=rejected} not exported")


INTAKE_LOGGER = "seriesflow.receiver.intake"  # the package's import root is seriesflow


@pytest.mark.parametrize(
    ("policy", "refused_as", "reason", "why"),
    [
        (
            {"allowed_calling_ae_titles": frozenset({"MODALITY1"})},
            ("INTRUDER", "STORESCP"),
            3,  # calling AE title not recognised
            "calling AE title not allowed",
        ),
        (
            {"require_called_ae_title": True},
            ("MODALITY1", "WRONG"),
            7,  # called AE title not recognised
            "called AE title not recognised",
        ),
    ],
    ids=["calling-allow-list", "called-ae-required"],
)
def test_associations_failing_an_ae_title_check_are_rejected_logged_and_counted(
    policy: dict[str, object],
    refused_as: tuple[str, str],
    reason: int,
    why: str,
    make_receiver: MakeReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = make_receiver(**policy)
    rejected_before = rejected_associations(receiver)

    with caplog.at_level(logging.WARNING, logger=INTAKE_LOGGER):
        refused = rx_send.associate(receiver.dicom_port, *refused_as)
    allowed = rx_send.associate(receiver.dicom_port, "MODALITY1", "STORESCP")

    assert refused.is_rejected
    answer = refused.acceptor.primitive
    assert answer is not None
    # rejected-permanent, by the DICOM UL service-user, for the given reason (PS3.8 9.3.4)
    assert (answer.result, answer.result_source, answer.diagnostic) == (1, 1, reason)
    assert allowed.is_established
    assert allowed.send_c_echo().Status == 0
    allowed.release()
    logged = [getattr(r, "fields", {}) for r in caplog.records if r.name == INTAKE_LOGGER]
    calling, called = refused_as
    assert any(
        (f.get("calling_ae_title"), f.get("called_ae_title"), f.get("why"))
        == (calling, called, why)
        for f in logged
    )
    assert rejected_associations(receiver) == rejected_before + 1


def test_any_called_ae_title_is_accepted_by_default(make_receiver: MakeReceiver) -> None:
    receiver = make_receiver()

    assoc = rx_send.associate(receiver.dicom_port, "MODALITY1", "ANY_OTHER_AE")

    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_echoscu_calling_a_wrong_ae_title_is_refused_when_the_called_ae_is_required(
    make_receiver: MakeReceiver,
) -> None:
    echoscu = require_tool("echoscu")
    receiver = make_receiver(require_called_ae_title=True)

    def echo(called: str) -> subprocess.CompletedProcess[str]:
        command = [echoscu, "-aet", "DCMTKSCU", "-aec", called]
        command += ["127.0.0.1", str(receiver.dicom_port)]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    wrong, right = echo("WRONG"), echo("STORESCP")

    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    assert right.returncode == 0, right.stdout + right.stderr


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
        "seriesflow_receiver_spool_limit_bytes " + floatToGoString(receiver.config.spool_max_bytes),
        f'seriesflow_build_info{{revision="{build_info.revision()}",'
        f'version="{build_info.version()}"}} 1.0',
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ):
        assert name in metrics, name
    assert "Doe^Jane" not in metrics and "PAT-1" not in metrics
    assert get(receiver, "/metrics/")[0] == get(receiver, "/healthz")[0] == 404

    receiver.spool.close()  # the spool can no longer take writes
    assert get(receiver, "/readyz") == (503, "spool not writable\n")


def test_two_receivers_in_one_process_keep_their_own_counters(
    make_receiver: MakeReceiver,
) -> None:
    busy, idle = make_receiver(), make_receiver()
    rx_send.send_all(busy.dicom_port, rx_dicom.series(rx_dicom.SeriesSpec(), 3))

    stored = 'seriesflow_receiver_instances_total{reason="stored",status="success"}'
    assert f"{stored} 3.0" in get(busy, "/metrics")[1]
    assert stored not in get(idle, "/metrics")[1]


def test_a_spool_that_cannot_be_opened_stops_the_receiver_with_one_line_naming_it(
    tmp_path: Path,
) -> None:
    process = ReceiverProcess(tmp_path / "rx", "127.0.0.1:1")
    spool = tmp_path / "rx" / "spool"
    spool.mkdir(parents=True)
    (spool / "spool.sqlite3").write_bytes(b"not a database, " * 512)

    with pytest.raises(RuntimeError, match="receiver exited") as exited:
        process.start(timeout=30)

    assert process.terminate() == 1
    errors = [
        json.loads(line)
        for line in process.log.read_text().splitlines()
        if line.startswith("{") and '"ERROR"' in line
    ]
    assert [e["message"] for e in errors] == [
        "receiver cannot start: the spool cannot be opened; free space on its disk, or "
        "move a damaged spool file aside (its acknowledged instances are in it)"
    ]
    assert errors[0]["spool"] == str(spool)
    assert "Traceback" not in str(exited.value)
