"""Store test harness: migrated databases, stores on ephemeral ports, update builders.

A store runs either in a background thread of the test process (`running_store`) or as a
real `python -m seriesflow store` subprocess (`StoreProcess`); either way clients reach it over real
TCP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from conftest import new_database
from google.protobuf.timestamp_pb2 import Timestamp

from seriesflow import migrations
from seriesflow.store import probe
from seriesflow.store.config import StoreConfig
from seriesflow.store.server import RunningStore, start
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count(1)


def uid(*parts: int) -> str:
    """A syntactically valid, test-unique DICOM UID."""
    base = f"1.2.826.0.1.3680043.10.{os.getpid()}.{next(_counter)}"
    return ".".join([base, *map(str, parts)])


def ts(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def make_update(
    series_uid: str,
    sops: Iterable[str],
    *,
    study_uid: str = "1.2.3.4",
    patient_id: str = "PAT1",
    reason: int = pb.COMPLETION_REASON_IDLE,
    update_id: str | None = None,
    received: float = 1_700_000_000.0,
    modality: str = "CT",
    patient_name: str = "Doe^Jane",
    header: str = "",
    **series_fields: Any,
) -> pb.SeriesUpdate:
    # Instance attributes derive from the SOP UID, so the same instance sent twice (in any
    # order, in any update) is the same row.
    instances = [
        pb.Instance(
            sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            instance_number=n,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            size_bytes=1000 + n,
            received_at=ts(received + n),
        )
        for sop, n in ((sop, int(sop.rsplit(".", 1)[-1]) % 100_000) for sop in sops)
    ]
    return pb.SeriesUpdate(
        update_id=update_id or uuid.uuid4().hex,
        patient=pb.PatientAttributes(patient_id=patient_id, patient_name=patient_name),
        study=pb.StudyAttributes(
            study_instance_uid=study_uid, study_date="20240131", study_description="CHEST"
        ),
        series=pb.SeriesAttributes(
            series_instance_uid=series_uid, modality=modality, **series_fields
        ),
        instances=instances,
        source=pb.Source(calling_ae_title="MODALITY", called_ae_title="SF", receiver_id="r0"),
        completion_reason=reason,  # type: ignore[arg-type]
        representative_header_json=header,
    )


def send(channel: grpc.Channel, updates: Iterable[pb.SeriesUpdate]) -> list[pb.SeriesAck]:
    """Stream `updates` on one StoreSeries call; all acks once the server ends the call."""
    stub = pb_grpc.SeriesStoreStub(channel)
    return list(stub.StoreSeries(iter(list(updates)), timeout=120))


@pytest.fixture
def migrated_url(database_url: str) -> str:
    migrations.upgrade(database_url)
    return database_url


def store_config(url: str, **overrides: Any) -> StoreConfig:
    base = StoreConfig(
        database_url=url,
        listen_host="127.0.0.1",
        grpc_port=0,
        store_metrics_port=0,
        store_http_port=0,
        shutdown_grace=2.0,
        db_probe_interval=0.2,
        db_acquire_timeout=2.0,
    )
    return dataclasses.replace(base, **overrides)


class StoreThread:
    """A store served by an event loop in a background thread of this process."""

    def __init__(self, config: StoreConfig, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start(config, url, migrations.head_revisions()), self.loop
        )
        self.store: RunningStore = future.result(60)
        self.address = f"127.0.0.1:{self.store.grpc_port}"
        self._channels: list[grpc.Channel] = []

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.address)
        self._channels.append(ch)
        return ch

    def metrics_text(self) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.store.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        for ch in self._channels:
            ch.close()
        asyncio.run_coroutine_threadsafe(self.store.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def running_store(migrated_url: str) -> Iterator[StoreThread]:
    store = StoreThread(store_config(migrated_url), migrated_url)
    try:
        yield store
    finally:
        store.stop()


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database migrated to head on the test server, dropped afterwards."""
    with new_database(server_url) as url:
        migrations.upgrade(url)
        yield url


@pytest.fixture(scope="module")
def shared_store(postgres_server_url: str) -> Iterator[StoreThread]:
    """One store and database for a module's read-only tests (they must not write)."""
    with fresh_database(postgres_server_url) as url:
        store = StoreThread(store_config(url), url)
        try:
            yield store
        finally:
            store.stop()


class StoreProcess:
    """`python -m seriesflow store` in a subprocess, on ephemeral ports it reports in its log."""

    def __init__(self, url: str, *extra: str, env: dict[str, str] | None = None) -> None:
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports.append(probe.getsockname()[1])
        self.grpc_port, self.metrics_port = ports
        self.address = f"127.0.0.1:{self.grpc_port}"
        environ = dict(os.environ, **(env or {}))
        environ["SERIESFLOW_DATABASE_URL"] = url
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seriesflow",
                "store",
                "--listen-host",
                "127.0.0.1",
                "--grpc-port",
                str(self.grpc_port),
                "--store-metrics-port",
                str(self.metrics_port),
                "--store-http-port",
                "0",
                "--shutdown-grace",
                "3",
                *extra,
            ],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.wait_serving()

    def wait_serving(self, timeout: float = 30) -> None:
        if not probe.wait_serving(self.address, lambda: self.proc.poll() is None, timeout):
            if self.proc.poll() is not None:
                raise AssertionError(f"store exited early: {self.proc.communicate()}")
            raise AssertionError("store did not become SERVING in time")

    def terminate(self, timeout: float = 30) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def catalog_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every catalog row in a form comparable across databases (no surrogate keys)."""
    return {
        "patients": rows(
            url,
            """SELECT patient_id, issuer_of_patient_id, patient_name,
            patient_birth_date, patient_sex, last_received_at FROM patients ORDER BY 1, 2""",
        ),
        "studies": rows(
            url,
            """SELECT st.study_instance_uid, p.patient_id, st.study_date,
            st.study_description, st.first_received_at, st.last_received_at
            FROM studies st JOIN patients p ON p.id = st.patient_fk ORDER BY 1""",
        ),
        "series": rows(
            url,
            """SELECT s.series_instance_uid, st.study_instance_uid, s.modality,
            s.num_instances, s.total_size_bytes, s.first_received_at, s.last_received_at
            FROM series s JOIN studies st ON st.id = s.study_fk ORDER BY 1""",
        ),
        "instances": rows(
            url,
            """SELECT i.sop_instance_uid, s.series_instance_uid,
            i.instance_number, i.size_bytes, i.received_at
            FROM instances i JOIN series s ON s.id = i.series_fk ORDER BY 1""",
        ),
    }
