"""Authentication on the gRPC API, against a real store process: bearer tokens with separate
read and write scopes, mutual TLS identities, open health and reflection, real grpcurl."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
    store_config,
    uid,
)

from seriesflow.store.auth import parse_tokens
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

WRITE_TOKEN = "w-3f9c1a7e0b5d4c2a9e8f7a6b5c4d3e2f"
READ_TOKEN = "r-8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d"


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _list(channel: grpc.Channel, metadata: list[tuple[str, str]] | None = None) -> list[str]:
    stub = pb_grpc.SeriesStoreStub(channel)
    reply = stub.ListSeries(pb.ListSeriesRequest(page_size=100), timeout=10, metadata=metadata)
    return [s.series_instance_uid for s in reply.series]


def _store(
    channel: grpc.Channel, update: pb.SeriesUpdate, metadata: list[tuple[str, str]] | None = None
) -> list[pb.SeriesAck]:
    stub = pb_grpc.SeriesStoreStub(channel)
    return list(stub.StoreSeries(iter([update]), timeout=30, metadata=metadata))


def _refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def _instances(url: str, series_uid: str) -> int:
    [(count,)] = rows(
        url,
        "SELECT count(*) FROM instances i JOIN series s ON s.id = i.series_fk "
        "WHERE s.series_instance_uid = %s",
        series_uid,
    )
    return int(count)


@pytest.fixture
def token_files(tmp_path: Path) -> tuple[Path, Path]:
    write, read = tmp_path / "write-tokens", tmp_path / "read-tokens"
    write.write_text(f"# receivers\n{WRITE_TOKEN}\n\n")
    read.write_text(f"{READ_TOKEN}\n")
    return write, read


@pytest.fixture
def token_store(migrated_url: str, token_files: tuple[Path, Path]) -> Iterator[StoreProcess]:
    write, read = token_files
    store = StoreProcess(
        migrated_url,
        env={
            "SERIESFLOW_GRPC_AUTH": "token",
            "SERIESFLOW_GRPC_WRITE_TOKENS_FILE": str(write),
            "SERIESFLOW_GRPC_READ_TOKENS_FILE": str(read),
        },
    )
    try:
        yield store
    finally:
        store.kill()


def test_without_a_token_queries_and_writes_are_unauthenticated(
    token_store: StoreProcess, migrated_url: str
) -> None:
    s = uid()
    with grpc.insecure_channel(token_store.address) as ch:
        listed = _refused(lambda: _list(ch))
        assert listed.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in (listed.details() or "")
        assert "SERIESFLOW_GRPC_READ_TOKENS_FILE" in (listed.details() or "")
        written = _refused(lambda: _store(ch, make_update(s, [f"{s}.1"])))
        assert written.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "SERIESFLOW_GRPC_WRITE_TOKENS_FILE" in (written.details() or "")
        assert _instances(migrated_url, s) == 0
        # The next caller with a write token is served as usual.
        [ack] = _store(ch, make_update(s, [f"{s}.1", f"{s}.2"]), _bearer(WRITE_TOKEN))
        assert ack.ok and ack.num_instances == 2
    assert _instances(migrated_url, s) == 2


def test_a_read_token_lists_series_but_cannot_store_them(
    token_store: StoreProcess, migrated_url: str
) -> None:
    s = uid()
    with grpc.insecure_channel(token_store.address) as ch:
        [ack] = _store(ch, make_update(s, [f"{s}.1"]), _bearer(WRITE_TOKEN))
        assert ack.ok
        assert _list(ch, _bearer(READ_TOKEN)) == [s]
        other = uid()
        denied = _refused(
            lambda: _store(ch, make_update(other, [f"{other}.1"]), _bearer(READ_TOKEN))
        )
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may call the query RPCs but not StoreSeries" in (denied.details() or "")
        assert _instances(migrated_url, other) == 0
        [ack] = _store(ch, make_update(other, [f"{other}.1"]), _bearer(WRITE_TOKEN))
        assert ack.ok
    assert _instances(migrated_url, other) == 1


def test_a_write_token_stores_series_but_does_not_read_them(
    token_store: StoreProcess, migrated_url: str
) -> None:
    s = uid()
    with grpc.insecure_channel(token_store.address) as ch:
        [ack] = _store(ch, make_update(s, [f"{s}.1", f"{s}.2", f"{s}.3"]), _bearer(WRITE_TOKEN))
        assert ack.ok and ack.num_instances == 3
        denied = _refused(lambda: _list(ch, _bearer(WRITE_TOKEN)))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "SERIESFLOW_GRPC_READ_TOKENS_FILE" in (denied.details() or "")
        assert _list(ch, _bearer(READ_TOKEN)) == [s]
    assert _instances(migrated_url, s) == 3


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("Bearer not-a-known-token", "is not one this store accepts"),
        (f"Basic {READ_TOKEN}", "must be 'Bearer <token>'"),
        ("Bearer ", "must be 'Bearer <token>'"),
        (f"Bearer {READ_TOKEN[:-1]}", "is not one this store accepts"),
    ],
)
def test_unknown_or_malformed_credentials_are_unauthenticated(
    token_store: StoreProcess, value: str, needle: str
) -> None:
    with grpc.insecure_channel(token_store.address) as ch:
        refused = _refused(lambda: _list(ch, [("authorization", value)]))
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert needle in (refused.details() or "")
        assert _list(ch, _bearer(READ_TOKEN)) is not None


def test_health_and_reflection_need_no_token(token_store: StoreProcess) -> None:
    grpcurl = require_tool("grpcurl")
    with grpc.insecure_channel(token_store.address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listed = subprocess.run(
        [grpcurl, "-plaintext", token_store.address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert {"seriesflow.v1.SeriesStore", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = subprocess.run(
        [grpcurl, "-plaintext", token_store.address, "describe", "seriesflow.v1.SeriesStore"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert described.returncode == 0 and "rpc StoreSeries" in described.stdout


def test_grpcurl_with_a_bearer_header_reads_and_without_it_is_refused(
    token_store: StoreProcess,
) -> None:
    grpcurl = require_tool("grpcurl")
    s = uid()
    with grpc.insecure_channel(token_store.address) as ch:
        assert _store(ch, make_update(s, [f"{s}.1", f"{s}.2"]), _bearer(WRITE_TOKEN))[0].ok
    method = "seriesflow.v1.SeriesStore/ListSeries"

    def grpcurl_list(*headers: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [grpcurl, "-plaintext", *headers, "-d", "{}", token_store.address, method],
            capture_output=True,
            text=True,
            timeout=30,
        )

    answered = grpcurl_list("-H", f"authorization: Bearer {READ_TOKEN}")
    assert answered.returncode == 0, answered.stderr
    [series] = json.loads(answered.stdout)["series"]
    assert series["seriesInstanceUid"] == s and series["numInstances"] == "2"
    refused = grpcurl_list()
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr and "authorization: Bearer" in refused.stderr


def test_refusals_are_counted_by_scope_and_reason(token_store: StoreProcess) -> None:
    with grpc.insecure_channel(token_store.address) as ch:
        _refused(lambda: _list(ch))
        _refused(lambda: _list(ch, _bearer(WRITE_TOKEN)))
        _refused(lambda: _list(ch, _bearer("nope")))
        s = uid()
        _refused(lambda: _store(ch, make_update(s, [f"{s}.1"]), _bearer(READ_TOKEN)))
    url = f"http://127.0.0.1:{token_store.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for line in (
        'seriesflow_store_auth_rejections_total{reason="missing_credentials",scope="read"} 1.0',
        'seriesflow_store_auth_rejections_total{reason="wrong_scope",scope="read"} 1.0',
        'seriesflow_store_auth_rejections_total{reason="unknown_token",scope="read"} 1.0',
        'seriesflow_store_auth_rejections_total{reason="wrong_scope",scope="write"} 1.0',
        'seriesflow_store_auth_rejections_total{reason="unknown_token",scope="write"} 0.0',
        'seriesflow_store_grpc_server_handled_total{grpc_code="UNAUTHENTICATED",'
        'grpc_method="ListSeries",grpc_service="seriesflow.v1.SeriesStore",grpc_type="unary"} 2.0',
    ):
        assert line in text
    assert READ_TOKEN not in text and WRITE_TOKEN not in text


def test_a_rewritten_token_file_takes_effect_without_a_restart(
    token_store: StoreProcess, token_files: tuple[Path, Path]
) -> None:
    _, read = token_files
    new_token = "r-rotated-0a1b2c3d4e5f60718293a4b5"
    replacement = read.with_name("read-tokens.new")
    replacement.write_text(f"{new_token}\n")
    replacement.replace(read)  # a new inode, as a Kubernetes Secret update gives
    with grpc.insecure_channel(token_store.address) as ch:
        deadline = time.monotonic() + 10
        while True:
            try:
                _list(ch, _bearer(new_token))
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new token was never accepted"
                time.sleep(0.2)
        old = _refused(lambda: _list(ch, _bearer(READ_TOKEN)))
        assert old.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_missing_token_file_stops_the_store_naming_the_variable(
    migrated_url: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [".venv/bin/python", "-m", "seriesflow", "store", "--grpc-port", "0"],
        cwd=Path(__file__).resolve().parents[2],
        env={
            "SERIESFLOW_DATABASE_URL": migrated_url,
            "SERIESFLOW_STORE_METRICS_PORT": "0",
            "SERIESFLOW_STORE_HTTP_PORT": "0",
            "SERIESFLOW_GRPC_READ_TOKENS_FILE": str(tmp_path / "absent"),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "SERIESFLOW_GRPC_READ_TOKENS_FILE" in result.stderr


def test_token_mode_without_a_token_file_is_a_configuration_error(migrated_url: str) -> None:
    result = subprocess.run(
        [".venv/bin/python", "-m", "seriesflow", "store", "--grpc-auth", "token"],
        cwd=Path(__file__).resolve().parents[2],
        env={"SERIESFLOW_DATABASE_URL": migrated_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SERIESFLOW_GRPC_WRITE_TOKENS_FILE" in result.stderr


def test_token_file_lines_skip_blanks_and_comments() -> None:
    assert len(parse_tokens("# comment\n\n  abc  \ndef\n")) == 2
    assert parse_tokens("abc\n") == parse_tokens("  abc\r\n")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("auth-tls"))


def _mtls_store(url: str, pki: Pki, write: str, read: str) -> StoreThread:
    config = store_config(
        url,
        grpc_tls_cert=pki.server_cert,
        grpc_tls_key=pki.server_key,
        grpc_tls_client_ca=pki.ca,
        grpc_auth="mtls",
        grpc_mtls_write_identities=frozenset(write.split(",")) - {""},
        grpc_mtls_read_identities=frozenset(read.split(",")) - {""},
    )
    return StoreThread(config, url)


def _mtls_channel(store: StoreThread, pki: Pki) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    return grpc.secure_channel(f"localhost:{store.store.grpc_port}", credentials)


def test_mtls_maps_the_client_certificate_common_name_to_the_write_scope(
    migrated_url: str, certificates: Pki
) -> None:
    store = _mtls_store(migrated_url, certificates, write="client", read="reporting")
    try:
        s = uid()
        with _mtls_channel(store, certificates) as ch:
            [ack] = _store(ch, make_update(s, [f"{s}.1", f"{s}.2"]))
            assert ack.ok
            denied = _refused(lambda: _list(ch))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "SERIESFLOW_GRPC_MTLS_READ_IDENTITIES" in (denied.details() or "")
            # a bearer token does not stand in for a certificate name in mtls mode
            assert _refused(lambda: _list(ch, _bearer(READ_TOKEN))).code() == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert _instances(migrated_url, s) == 2
    finally:
        store.stop()


def test_mtls_maps_a_subject_alternative_name_to_the_read_scope(
    migrated_url: str, certificates: Pki
) -> None:
    # The test client certificate carries SAN DNS:localhost besides CN=client.
    store = _mtls_store(migrated_url, certificates, write="", read="localhost")
    try:
        s = uid()
        with _mtls_channel(store, certificates) as ch:
            assert _list(ch) == []
            denied = _refused(lambda: _store(ch, make_update(s, [f"{s}.1"])))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "SERIESFLOW_GRPC_MTLS_WRITE_IDENTITIES" in (denied.details() or "")
        assert _instances(migrated_url, s) == 0
    finally:
        store.stop()


def test_mtls_with_a_certificate_in_neither_list_is_denied(
    migrated_url: str, certificates: Pki
) -> None:
    store = _mtls_store(migrated_url, certificates, write="receiver-0", read="reporting")
    try:
        with _mtls_channel(store, certificates) as ch:
            denied = _refused(lambda: _list(ch))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "has no scope on this store" in (denied.details() or "")
    finally:
        store.stop()
