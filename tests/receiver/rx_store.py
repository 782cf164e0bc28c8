"""The real store, run as a child process against a test database, and ways to read it back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
_RUN_STORE = (
    "import sys\nfrom seriesflow.cli import main\nsys.exit(main(['migrate']) or main(['store']))\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StoreProcess:
    """`seriesflow store` in a child process: migrate, then serve on a fixed free port."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        tls: dict[str, Path] | None = None,
        **settings_: str,
    ) -> None:
        """`tls`: {"cert", "key", "client_ca", "ca"} paths for TLS (client_ca: mutual);
        `settings_`: more settings by name, e.g. hold_timeout="4"."""
        self.settings = {f"SERIESFLOW_{k.upper()}": v for k, v in settings_.items()}
        self.database_url = database_url
        self.data_dir = data_dir
        self.tls = tls
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "store.log"

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            SERIESFLOW_DATABASE_URL=self.database_url,
            SERIESFLOW_DATA_DIR=str(self.data_dir),
            SERIESFLOW_LISTEN_HOST="127.0.0.1",
            SERIESFLOW_GRPC_PORT=str(self.port),
            SERIESFLOW_STORE_METRICS_PORT="0",
            SERIESFLOW_STORE_HTTP_PORT=str(self.http_port),
            SERIESFLOW_SHUTDOWN_GRACE="2",
            SERIESFLOW_LOG_LEVEL="WARNING",
        )
        env.update(self.settings)
        if self.tls:
            env.update(
                SERIESFLOW_GRPC_TLS_CERT=str(self.tls["cert"]),
                SERIESFLOW_GRPC_TLS_KEY=str(self.tls["key"]),
            )
            if "client_ca" in self.tls:
                env["SERIESFLOW_GRPC_TLS_CLIENT_CA"] = str(self.tls["client_ca"])
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _RUN_STORE], cwd=REPO, env=env, stdout=log, stderr=log
            )
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"store exited: {self.log.read_text()[-2000:]}")
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"store not serving after {timeout}s: {self.log.read_text()[-2000:]}")

    def channel(self) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls["ca"].read_bytes(),
            private_key=self.tls["client_key"].read_bytes() if "client_key" in self.tls else None,
            certificate_chain=(
                self.tls["client_cert"].read_bytes() if "client_cert" in self.tls else None
            ),
        )
        return grpc.secure_channel(self.address, credentials)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def series(self, series_uid: str) -> pb.GetSeriesResponse | None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.SeriesStoreStub(channel)
            try:
                return stub.GetSeries(
                    pb.GetSeriesRequest(series_instance_uid=series_uid, page_size=1000), timeout=10
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise

    def list_series(self) -> list[pb.Series]:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.SeriesStoreStub(channel)
            return list(stub.ListSeries(pb.ListSeriesRequest(page_size=1000), timeout=10).series)


def count_instances(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM instances").fetchone()
    return int(row[0]) if row else 0


def series_counts(database_url: str) -> dict[str, int]:
    """series_instance_uid -> stored instance rows, straight from PostgreSQL."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT s.series_instance_uid, count(i.sop_instance_uid) FROM series s "
            "LEFT JOIN instances i ON i.series_fk = s.id GROUP BY s.series_instance_uid"
        ).fetchall()
    return {uid: int(n) for uid, n in rows}


def wait_for(predicate: object, timeout: float = 20.0, interval: float = 0.1) -> None:
    """Poll `predicate()` until truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()  # type: ignore[operator]
        if last:
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value {last!r})")


def series_row(database_url: str, series_uid: str) -> dict[str, object] | None:
    """The stored series with its patient, straight from PostgreSQL; None when absent."""
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "SELECT s.num_instances, s.status, s.completion_reason, p.patient_name, "
            "p.patient_id, s.text_decoding_fallbacks, s.representative_header, "
            "(SELECT count(*) FROM instances i WHERE i.series_fk = s.id) AS instance_rows "
            "FROM series s JOIN patients p ON p.id = s.patient_fk "
            "WHERE s.series_instance_uid = %s",
            (series_uid,),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        names = [c.name for c in cursor.description or []]
    return dict(zip(names, row, strict=True))


def instance_syntaxes(database_url: str, series_uid: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT i.sop_instance_uid, i.transfer_syntax_uid FROM instances i "
            "JOIN series s ON s.id = i.series_fk WHERE s.series_instance_uid = %s",
            (series_uid,),
        ).fetchall()
    return {uid: syntax for uid, syntax in rows}
