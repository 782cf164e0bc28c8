"""StoreSeries throughput against a raw COPY of the same rows, in one run.

    .venv/bin/python bench/store_bench.py                  # 2,000 series x 100 instances
    .venv/bin/python bench/store_bench.py --series 50      # smoke run

Starts an embedded PostgreSQL (or uses --database-url's server), a fresh database migrated
to head, and a real store process (`python -m store`) on ephemeral ports. Then:

1. after --warmup untimed updates, streams every series as one SeriesUpdate through
   StoreSeries (acks only after commit, as always) on --streams concurrent streams, and
   times first send -> last ack;
2. measures ack latency unloaded: --probe updates sent one at a time, each waiting for its
   ack;
3. COPYs the same instance rows, in one transaction, into a table shaped like `instances`
   (same columns and indexes), as the raw-speed reference: three times, the median counts.

Prints a readable summary; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seriesflow import migrations  # noqa: E402
from seriesflow.store import probe  # noqa: E402
from seriesflow.v1 import series_store_pb2 as pb  # noqa: E402
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc  # noqa: E402

ROOT_UID = "1.2.826.0.1.3680043.10.999"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_updates(run: str, series: int, instances: int, t0: float) -> list[pb.SeriesUpdate]:
    out = []
    for s in range(series):
        series_uid = f"{ROOT_UID}.{run}.{s + 1}"
        study_uid = f"{ROOT_UID}.{run}.0.{s // 4 + 1}"  # four series per study
        received = Timestamp()
        items = []
        for n in range(1, instances + 1):
            received.FromNanoseconds(int((t0 + s + n / 1000) * 1e9))
            items.append(
                pb.Instance(
                    sop_instance_uid=f"{series_uid}.{n}",
                    sop_class_uid=CT_IMAGE,
                    instance_number=n,
                    transfer_syntax_uid=EXPLICIT_LE,
                    size_bytes=526_000 + n,
                    received_at=received,
                )
            )
        out.append(
            pb.SeriesUpdate(
                update_id=f"bench-{run}-{s}",
                patient=pb.PatientAttributes(patient_id=f"BENCH{s // 8}", patient_name="Bench^Pat"),
                study=pb.StudyAttributes(study_instance_uid=study_uid, study_date="20240101"),
                series=pb.SeriesAttributes(
                    series_instance_uid=series_uid, modality="CT", series_number=s % 10
                ),
                instances=items,
                source=pb.Source(calling_ae_title="BENCH", called_ae_title="SF", receiver_id="b"),
                completion_reason=pb.COMPLETION_REASON_IDLE,
            )
        )
    return out


class Store:
    def __init__(self, url: str, batch_max_updates: int, profile: str | None) -> None:
        self.grpc_port, self.metrics_port = _free_port(), _free_port()
        env = dict(os.environ, SERIESFLOW_DATABASE_URL=url, SERIESFLOW_LOG_LEVEL="WARNING")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *(["-m", "cProfile", "-o", profile] if profile else []),
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
                "--batch-max-updates",
                str(batch_max_updates),
            ],
            cwd=ROOT,
            env=env,
        )
        self.address = f"127.0.0.1:{self.grpc_port}"
        if not probe.wait_serving(self.address, lambda: self.proc.poll() is None, 60):
            if self.proc.poll() is not None:
                raise SystemExit("the store exited during start-up; see its log above")
            raise SystemExit("the store did not become SERVING within 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def stream(
    address: str, updates: list[pb.SeriesUpdate], latencies: list[float], window: int = 0
) -> int:
    """Send `updates` on one stream, at most `window` unacked at a time (0: no limit, as
    fast as gRPC flow control allows); append each update's send -> ack time."""
    sent_at: dict[str, float] = {}
    slots = threading.Semaphore(window) if window else None

    def requests() -> Iterator[pb.SeriesUpdate]:
        for update in updates:
            if slots is not None:
                slots.acquire()
            sent_at[update.update_id] = time.perf_counter()
            yield update

    acked = 0
    with grpc.insecure_channel(address) as ch:
        for ack in pb_grpc.SeriesStoreStub(ch).StoreSeries(requests(), timeout=3600):
            if not ack.ok:
                raise SystemExit(f"update {ack.update_id} rejected: {ack.error.message}")
            latencies.append(time.perf_counter() - sent_at[ack.update_id])
            acked += 1
            if slots is not None:
                slots.release()
    return acked


def copy_baseline(url: str, updates: list[pb.SeriesUpdate]) -> float:
    """Seconds to COPY the same instance rows in one transaction (rows built inside)."""
    with psycopg.connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute(
            "CREATE TABLE bench_copy (LIKE instances INCLUDING DEFAULTS INCLUDING INDEXES)"
        )
        conn.commit()
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY bench_copy (sop_instance_uid, series_fk, sop_class_uid, instance_number,"
                " transfer_syntax_uid, size_bytes, received_at) FROM STDIN"
            ) as copy,
        ):
            for fk, update in enumerate(updates, start=1):
                for inst in update.instances:
                    copy.write_row(
                        (
                            inst.sop_instance_uid,
                            fk,
                            inst.sop_class_uid,
                            inst.instance_number,
                            inst.transfer_syntax_uid,
                            inst.size_bytes,
                            inst.received_at.ToDatetime(tzinfo=None),
                        )
                    )
        conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return elapsed


def _scrape(port: int, since: dict[str, float]) -> dict[str, float]:
    """The store's own figures (transactions, time in them), minus those in `since`."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = {
        "seriesflow_store_transaction_duration_seconds_count": "transactions",
        "seriesflow_store_transaction_duration_seconds_sum": "transaction_seconds",
    }
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value) - since.get(wanted[name], 0.0)
    return out


def _cpu_seconds(pid: int) -> float:
    """CPU (user + system) the store process has used so far."""
    import psutil  # a dependency of pgserver

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=100, help="instances per series")
    parser.add_argument("--streams", type=int, default=1, help="concurrent StoreSeries streams")
    parser.add_argument("--probe", type=int, default=100, help="updates for unloaded latency")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates sent first")
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        help="most unacked updates per stream, like the receiver's stream_window (0: no limit)",
    )
    parser.add_argument("--batch-max-updates", type=int, default=128)
    parser.add_argument("--database-url", help="PostgreSQL server to use (default: embedded)")
    parser.add_argument("--profile", help="run the store under cProfile, writing stats here")
    args = parser.parse_args()

    embedded = None
    workdir = tempfile.mkdtemp(prefix="sf-bench-")
    if args.database_url:
        server_url = args.database_url
    else:
        from seriesflow.store.embedded_postgres import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(workdir))
        server_url = embedded.url
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    url = make_conninfo(**params)
    store = None
    try:
        migrations.upgrade(url)
        run = str(int(time.time()))
        t0 = time.time() - 3600
        updates = build_updates(run, args.series, args.instances, t0)
        probe_updates = build_updates(run + "9", args.probe, args.instances, t0)
        warmup_updates = build_updates(run + "8", args.warmup, args.instances, t0)
        total = args.series * args.instances
        store = Store(url, args.batch_max_updates, args.profile)

        # Warm up (pool connections, prepared statements) so the timed run is steady state.
        stream(store.address, warmup_updates, [])
        baseline = _scrape(store.metrics_port, {})
        idle_cpu = _cpu_seconds(store.proc.pid)  # start-up, warm-up
        latencies: list[float] = []
        parts = [updates[i :: args.streams] for i in range(args.streams)]
        threads = [
            threading.Thread(target=stream, args=(store.address, p, latencies, args.window))
            for p in parts
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stream_seconds = time.perf_counter() - start
        if len(latencies) != args.series:
            raise SystemExit(f"expected {args.series} acks, got {len(latencies)}")

        server = _scrape(store.metrics_port, baseline)
        server["cpu_seconds"] = _cpu_seconds(store.proc.pid) - idle_cpu
        unloaded: list[float] = []
        for update in probe_updates:
            stream(store.address, [update], unloaded)

        with psycopg.connect(url) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM instances i JOIN series s ON s.id = i.series_fk "
                "WHERE s.series_instance_uid LIKE %s",
                [f"{ROOT_UID}.{run}.%"],
            ).fetchone()
        assert stored is not None and stored[0] == total, (stored, total)
        # The machine is shared: take the median of three COPYs, not one lucky or unlucky run.
        copy_runs = sorted(copy_baseline(url, updates) for _ in range(3))
        copy_seconds = copy_runs[1]
    finally:
        if store is not None:
            store.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if embedded is not None:
            embedded.stop()

    stream_rate = total / stream_seconds
    copy_rate = total / copy_seconds
    figures = {
        "series": args.series,
        "instances_per_series": args.instances,
        "instances": total,
        "streams": args.streams,
        "window": args.window,
        "storeseries_seconds": round(stream_seconds, 3),
        "storeseries_instances_per_s": round(stream_rate),
        "copy_seconds": round(copy_seconds, 3),
        "copy_rows_per_s": round(copy_rate),
        "ratio": round(stream_rate / copy_rate, 3),
        "store_transactions": int(server.get("transactions", 0)),
        "store_seconds_in_transactions": round(server.get("transaction_seconds", 0.0), 3),
        "store_cpu_seconds_streaming": round(server.get("cpu_seconds", 0.0), 2),
        "target_ratio": 0.5,
        "ack_latency_loaded_p50_ms": round(_quantile(latencies, 0.50) * 1000, 2),
        "ack_latency_loaded_p99_ms": round(_quantile(latencies, 0.99) * 1000, 2),
        "ack_latency_unloaded_p50_ms": round(_quantile(unloaded, 0.50) * 1000, 2),
        "ack_latency_unloaded_p99_ms": round(_quantile(unloaded, 0.99) * 1000, 2),
    }
    print(
        f"StoreSeries: {total} instances in {stream_seconds:.2f} s = {stream_rate:,.0f}/s "
        f"({args.series} updates on {args.streams} stream(s), acked after commit)"
    )
    print(f"raw COPY:    {total} rows in {copy_seconds:.2f} s = {copy_rate:,.0f}/s")
    print(f"ratio:       {figures['ratio']} (target >= 0.5)")
    print(
        f"ack latency under load: p50 {figures['ack_latency_loaded_p50_ms']} ms, "
        f"p99 {figures['ack_latency_loaded_p99_ms']} ms (send -> ack, saturated stream)"
    )
    print(
        f"ack latency unloaded:   p50 {figures['ack_latency_unloaded_p50_ms']} ms, "
        f"p99 {figures['ack_latency_unloaded_p99_ms']} ms (one update at a time)"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
