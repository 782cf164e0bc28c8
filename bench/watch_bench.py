"""WatchSeries delivery latency: COMPLETE commit -> event at a watcher, 1 and 20 watchers.

    .venv/bin/python bench/watch_bench.py               # 200 series per watcher count
    .venv/bin/python bench/watch_bench.py --quick       # smoke run

Starts an embedded PostgreSQL (or uses --database-url's server), a fresh database migrated
to head and a real store process. For each watcher count, that many WatchSeries streams
(kinds=[COMPLETED], from now) run in threads of this process; then series are stored one at
a time (one update with reason IDLE, so each commit completes a series), and for each the
time from its ack reaching the sender (the commit happened before it) to its COMPLETED
event reaching each watcher is recorded. The baseline, measured in the same run, is the
round trip of a GetSeries call for the same series: the ratio says what the feed costs over
asking. Prints a summary; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from store_bench import Store, _quantile, build_updates

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seriesflow import migrations  # noqa: E402
from seriesflow.v1 import series_store_pb2 as pb  # noqa: E402
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc  # noqa: E402


class Watcher:
    def __init__(self, address: str) -> None:
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self._changed = threading.Condition()
        self._channel = grpc.insecure_channel(address)
        stub = pb_grpc.SeriesStoreStub(self._channel)
        self._call = stub.WatchSeries(
            pb.WatchSeriesRequest(kinds=[pb.SERIES_EVENT_KIND_COMPLETED], consumer="bench")
        )
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        try:
            for event in self._call:
                now = time.perf_counter()
                with self._changed:
                    self.arrived[event.series.series_instance_uid] = now
                    self._changed.notify_all()
        except grpc.RpcError:
            pass

    def wait_for(self, series: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self._changed:
            while series not in self.arrived:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"no COMPLETED event for {series} within {timeout} s")
                self._changed.wait(left)
            return self.arrived[series]

    def stop(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


def run_round(address: str, watchers: int, series: int, gap: float) -> dict[str, float]:
    group = [Watcher(address) for _ in range(watchers)]
    time.sleep(1.0)  # every watch takes its "from now" position before the first commit
    run = str(uuid.uuid4().int % 10**12)
    updates = build_updates(run, series, 10, time.time())
    delivery: list[float] = []
    baseline: list[float] = []
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.SeriesStoreStub(ch)
        for update in updates:
            [ack] = list(stub.StoreSeries(iter([update]), timeout=60))
            acked = time.perf_counter()
            if not ack.ok:
                raise SystemExit(f"update rejected: {ack.error.message}")
            uid = update.series.series_instance_uid
            for watcher in group:
                delivery.append(max(0.0, watcher.wait_for(uid, 30) - acked))
            start = time.perf_counter()
            stub.GetSeries(pb.GetSeriesRequest(series_instance_uid=uid, page_size=1), timeout=10)
            baseline.append(time.perf_counter() - start)
            time.sleep(gap)
    for watcher in group:
        watcher.stop()
    p50, p99 = _quantile(delivery, 0.5), _quantile(delivery, 0.99)
    base = _quantile(baseline, 0.5)
    return {
        "watchers": watchers,
        "events": len(delivery),
        "delivery_p50_ms": p50 * 1000,
        "delivery_p99_ms": p99 * 1000,
        "getseries_p50_ms": base * 1000,
        "p50_vs_getseries": p50 / base if base else 0.0,
        "p99_vs_getseries": p99 / base if base else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=200, help="series per watcher count")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between commits")
    parser.add_argument("--quick", action="store_true", help="30 series: a smoke run")
    parser.add_argument("--database-url", help="PostgreSQL server to use (default: embedded)")
    args = parser.parse_args()
    series = 30 if args.quick else args.series

    embedded = None
    if args.database_url:
        server_url = args.database_url
    else:
        from seriesflow.store.embedded_postgres import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="sf-watch-bench-")))
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
        store = Store(url, 128, None)
        rounds = [run_round(store.address, n, series, args.gap) for n in (1, 20)]
    finally:
        if store is not None:
            store.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if embedded is not None:
            embedded.stop()
    print("WatchSeries delivery (ack at the sender -> COMPLETED event at each watcher)")
    for r in rounds:
        print(
            f"  {r['watchers']:>2} watchers: p50 {r['delivery_p50_ms']:.1f} ms "
            f"({r['p50_vs_getseries']:.2f}x a GetSeries round trip of "
            f"{r['getseries_p50_ms']:.1f} ms), p99 {r['delivery_p99_ms']:.1f} ms "
            f"({r['p99_vs_getseries']:.2f}x), {r['events']} events"
        )
    print(json.dumps({"watch": rounds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
