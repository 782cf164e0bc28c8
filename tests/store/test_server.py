"""The running server: SIGTERM, /metrics, TLS and mutual TLS, grpcurl via reflection."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import json
import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import require_tool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Pki, make_pki
from st_harness import (  # noqa: F401 (fixtures)
    StoreProcess,
    StoreThread,
    make_update,
    migrated_url,
    rows,
    running_store,
    send,
    store_config,
    uid,
)

from seriesflow import build_info
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc


def test_sigterm_ends_open_streams_unavailable_and_exits_zero(migrated_url: str) -> None:
    process = StoreProcess(migrated_url)
    try:
        channel = grpc.insecure_channel(process.address)
        outbox: queue.Queue[pb.SeriesUpdate | None] = queue.Queue()

        def requests() -> Iterator[pb.SeriesUpdate]:
            while (item := outbox.get()) is not None:
                yield item

        responses = pb_grpc.SeriesStoreStub(channel).StoreSeries(requests(), timeout=60)
        series = uid()
        outbox.put(make_update(series, [f"{series}.1"], update_id="before-term"))
        assert next(responses).ok
        started = time.monotonic()
        code, stderr = process.terminate()
        assert code == 0, stderr
        assert time.monotonic() - started < 10
        with pytest.raises(grpc.RpcError) as ended:
            list(responses)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        outbox.put(None)
        channel.close()
        logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        messages = [entry["message"] for entry in logs]
        assert "store shutting down" in messages and messages[-1] == "store stopped"
        assert rows(migrated_url, "SELECT count(*) FROM instances") == [(1,)]
    finally:
        process.kill()


def test_store_refuses_to_start_on_a_schema_not_at_head(database_url: str) -> None:
    result = subprocess.run(
        [
            ".venv/bin/python",
            "-m",
            "seriesflow",
            "store",
            "--grpc-port",
            "0",
            "--store-metrics-port",
            "0",
            "--store-http-port",
            "0",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={"SERIESFLOW_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "seriesflow migrate" in result.stderr


def test_health_serves_both_service_names(running_store: StoreThread) -> None:
    stub = health_pb2_grpc.HealthStub(running_store.channel())
    for name in ("", "seriesflow.v1.SeriesStore"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_expose_every_documented_name(running_store: StoreThread) -> None:
    ch = running_store.channel()
    s = uid()
    send(ch, [make_update(s, [f"{s}.1", f"{s}.2"]), make_update(s, [f"{s}.2"])])
    stub = pb_grpc.SeriesStoreStub(ch)
    stub.ListSeries(pb.ListSeriesRequest())
    with pytest.raises(grpc.RpcError):
        stub.GetSeries(pb.GetSeriesRequest(series_instance_uid="9.9.9"))
    expected_lines = [
        'seriesflow_store_updates_total{result="ok"} 2.0',
        'seriesflow_store_updates_total{result="invalid"} 0.0',
        'seriesflow_store_updates_total{result="unavailable"} 0.0',
        'seriesflow_store_instances_total{result="new"} 2.0',
        'seriesflow_store_instances_total{result="duplicate"} 1.0',
        'seriesflow_store_instances_total{result="conflict"} 0.0',
        "seriesflow_store_transaction_duration_seconds_bucket",
        "seriesflow_store_ack_latency_seconds_count 2.0",
        "seriesflow_store_active_streams 0.0",
        'seriesflow_store_db_pool_connections{state="in_use"}',
        'seriesflow_store_db_pool_connections{state="idle"}',
        "seriesflow_store_db_pool_waiting",
        'seriesflow_store_merge_conflicts_total{kind="instance_in_other_series"} 0.0',
        'seriesflow_store_merge_conflicts_total{kind="study_patient_mismatch"} 0.0',
        "seriesflow_store_database_up 1.0",
        'seriesflow_store_grpc_server_started_total{grpc_method="StoreSeries",'
        'grpc_service="seriesflow.v1.SeriesStore",grpc_type="bidi_stream"} 1.0',
        'seriesflow_store_grpc_server_handled_total{grpc_code="OK",grpc_method="ListSeries",'
        'grpc_service="seriesflow.v1.SeriesStore",grpc_type="unary"} 1.0',
        'seriesflow_store_grpc_server_handled_total{grpc_code="NOT_FOUND",'
        'grpc_method="GetSeries",grpc_service="seriesflow.v1.SeriesStore",grpc_type="unary"} 1.0',
        'seriesflow_store_grpc_server_handling_seconds_count{grpc_method="ListSeries",'
        'grpc_service="seriesflow.v1.SeriesStore",grpc_type="unary"} 1.0',
        # The build and the process, as the receiver exports them.
        f'seriesflow_build_info{{revision="{build_info.revision()}",'
        f'version="{build_info.version()}"}} 1.0',
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_start_time_seconds ",
        "python_info{",
    ]
    # The server counts a call as handled just after the client has its answer: poll.
    deadline = time.monotonic() + 10
    while True:
        text = running_store.metrics_text()
        missing = [line for line in expected_lines if line not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not missing
    assert "Doe" not in text and "PAT1" not in text  # no patient data in metrics


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"))


def _list(channel: grpc.Channel) -> pb.ListSeriesResponse:
    return pb_grpc.SeriesStoreStub(channel).ListSeries(pb.ListSeriesRequest(), timeout=5)


def test_tls_serves_clients_that_trust_the_ca_only(migrated_url: str, certificates: Pki) -> None:
    d = certificates
    config = store_config(migrated_url, grpc_tls_cert=d.server_cert, grpc_tls_key=d.server_key)
    store = StoreThread(config, migrated_url)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=d.ca.read_bytes())
        with grpc.secure_channel(f"localhost:{store.store.grpc_port}", creds) as ch:
            assert _list(ch).series == []
        with grpc.insecure_channel(store.address) as ch, pytest.raises(grpc.RpcError):
            _list(ch)
    finally:
        store.stop()


def test_mutual_tls_requires_a_client_certificate(migrated_url: str, certificates: Pki) -> None:
    d = certificates
    config = store_config(
        migrated_url,
        grpc_tls_cert=d.server_cert,
        grpc_tls_key=d.server_key,
        grpc_tls_client_ca=d.ca,
    )
    store = StoreThread(config, migrated_url)
    target = f"localhost:{store.store.grpc_port}"
    ca = d.ca.read_bytes()
    try:
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=d.client_key.read_bytes(),
            certificate_chain=d.client_cert.read_bytes(),
        )
        with grpc.secure_channel(target, with_cert) as ch:
            assert _list(ch).series == []
        without = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(target, without) as ch, pytest.raises(grpc.RpcError) as info:
            _list(ch)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        store.stop()


def test_grpcurl_lists_describes_and_calls_the_store(running_store: StoreThread) -> None:
    grpcurl = require_tool("grpcurl")
    s = uid()
    header = json.dumps({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}})
    send(running_store.channel(), [make_update(s, [f"{s}.1", f"{s}.2"], header=header)])

    def run(*args: str) -> str:
        result = subprocess.run(
            [grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    address = running_store.address
    services = run(address, "list").split()
    assert {"seriesflow.v1.SeriesStore", "grpc.health.v1.Health"} <= set(services)
    described = run(address, "describe", "seriesflow.v1.SeriesStore")
    assert "rpc ListSeries" in described and "rpc StoreSeries" in described
    listed = json.loads(
        run("-d", '{"modality": "CT"}', address, "seriesflow.v1.SeriesStore/ListSeries")
    )
    [series] = listed["series"]
    assert series["seriesInstanceUid"] == s
    assert series["numInstances"] == "2"
    assert series["status"] == "SERIES_STATUS_COMPLETE"
    assert {"patientId", "patientName", "firstReceivedAt", "lastReceivedAt"} <= set(series)
    request = json.dumps({"seriesInstanceUid": s, "attributes": ["PatientName", "00080060"]})
    answered = json.loads(run("-d", request, address, "seriesflow.v1.SeriesStore/GetAttributes"))
    name, modality = answered["attributes"]
    assert name["value"] == "Doe^Jane" and name["present"] is True
    assert modality["tag"] == "00080060" and "present" not in modality


def test_store_exits_with_a_clear_error_when_its_grpc_port_is_taken(migrated_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                ".venv/bin/python",
                "-m",
                "seriesflow",
                "store",
                "--grpc-port",
                str(port),
                "--store-metrics-port",
                "0",
                "--store-http-port",
                "0",
            ],
            cwd=Path(__file__).resolve().parents[2],
            env={"SERIESFLOW_DATABASE_URL": migrated_url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "--grpc-port" in result.stderr


def test_stop_ends_while_an_http_client_holds_a_request_half_sent(migrated_url: str) -> None:
    """A client that sent half a request and then went quiet (a stalled proxy, a port scan)
    must not hold the store's shutdown: it ends within its bounded steps, and the stalled
    connection is closed rather than waited for."""
    import socket

    store = StoreThread(store_config(migrated_url), migrated_url)
    stalled = socket.create_connection(("127.0.0.1", store.store.http_port), timeout=30)
    try:
        stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: unfinished
        started = time.monotonic()
        store.stop()
        # Bounded steps: 2 s gRPC grace + 5 s HTTP drain + 5 s tasks + 10 s pool, at most.
        assert time.monotonic() - started < 25
        assert stalled.recv(1024) == b""  # the server closed the connection
    finally:
        stalled.close()


def test_stop_goes_on_past_a_background_task_that_ignores_cancellation(
    migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # the defect being guarded against: a task that will not end

    store = StoreThread(store_config(migrated_url), migrated_url)
    future = asyncio.run_coroutine_threadsafe(_spawn(stubborn()), store.loop)
    store.store._background.append(future.result(10))
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="seriesflow.store.server"):
        store.stop()
    assert time.monotonic() - started < 25
    warned = [r for r in caplog.records if "did not end when cancelled" in r.getMessage()]
    assert warned, [r.getMessage() for r in caplog.records]
    assert "stubborn" in warned[0].__dict__["fields"]["stack"]


async def _spawn(work: Any) -> Any:
    import asyncio

    return asyncio.ensure_future(work)
