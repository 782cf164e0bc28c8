"""C-STORE throughput with series previews on and off, side by side in one run.

dcmtk `storescu` (one association, TCP_NODELAY=1) sends the same CT corpus (512x512x16
bit, series of 50) to a seriesflow receiver started with SERIESFLOW_PREVIEWS=false, then
=true, alternating for --rounds rounds against one store and PostgreSQL. Throughput is
instances/s from the first C-STORE to the last response (what a sender sees); the median
of each mode's rounds is compared (target: previews cost under 5 %). Also prints the time
from the last response until every series has its preview in PostgreSQL. The last line of
output is one JSON object with every figure.

    .venv/bin/python bench/preview_bench.py            # 400 instances, 3 rounds per mode
    .venv/bin/python bench/preview_bench.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from receiver_bench import SERIES_SIZE, Seriesflow, log, make_corpus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seriesflow.store.embedded_postgres import EmbeddedPostgres  # noqa: E402


def previews_ready(seriesflow: Seriesflow, series: int, timeout: float) -> float | None:
    """Seconds until `series` previews are stored (None if not within `timeout`)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        rows = seriesflow.sql("SELECT count(*) FROM series_previews WHERE png IS NOT NULL")
        if rows[0][0] >= series:
            return time.perf_counter() - start
        time.sleep(0.05)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus: a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode")
    args = parser.parse_args(argv)
    if shutil.which("storescu") is None:
        print("storescu is not installed; run `make tools`", file=sys.stderr)
        return 2
    count = 100 if args.quick else 400
    rounds = 1 if args.quick else args.rounds
    series = count // SERIES_SIZE
    work = Path(tempfile.mkdtemp(prefix="seriesflow-preview-bench-"))
    embedded = None
    seriesflow: Seriesflow | None = None
    try:
        log(f"work folder {work}; making {count} CT instances")
        corpus = work / "ct"
        nbytes = make_corpus(corpus, count, 512, parts=1)
        url = os.environ.get("SERIESFLOW_DATABASE_URL")
        if not url:
            embedded = EmbeddedPostgres(work / "pg")
            url = embedded.url
        db = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        seriesflow = Seriesflow(work, psycopg.conninfo.make_conninfo(url, dbname=db))
        rates: dict[str, list[float]] = {"off": [], "on": []}
        ready: list[float] = []
        for n in range(rounds):
            for mode in ("off", "on"):
                os.environ["SERIESFLOW_PREVIEWS"] = "true" if mode == "on" else "false"
                seriesflow.start_receiver(f"rx-{mode}-{n}")
                seriesflow.sql("TRUNCATE series_previews")
                seconds = seriesflow.run(corpus, 1, True, count)
                rates[mode].append(count / seconds)
                line = f"round {n + 1} previews {mode:3s}: {count / seconds:7.1f} instances/s"
                if mode == "on":
                    took = previews_ready(seriesflow, series, 120)
                    if took is None:
                        raise SystemExit("the previews were not all stored within 120 s")
                    ready.append(took)
                    line += f", every preview stored {took:.2f} s after the series"
                log(line)
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        result = {
            "instances": count,
            "mb": round(nbytes / 1e6, 1),
            "rounds": rounds,
            "off_instances_per_s": round(off, 1),
            "on_instances_per_s": round(on, 1),
            "on_vs_off": round(on / off, 3),
            "previews_stored_after_s_median": round(statistics.median(ready), 2),
        }
        log(
            f"previews on/off: {result['on_vs_off']:.3f} ({on:.1f} vs {off:.1f} instances/s;"
            " target >= 0.95)"
        )
        print(json.dumps(result))
        return 0
    finally:
        os.environ.pop("SERIESFLOW_PREVIEWS", None)
        if seriesflow is not None:
            seriesflow.close()
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
