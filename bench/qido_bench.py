"""QIDO-RS study search latency on a catalog of a million instances, against baselines.

    .venv/bin/python bench/qido_bench.py            # 1,000,000 instances, 200 searches per kind
    .venv/bin/python bench/qido_bench.py --quick    # 20,000 instances: the CI smoke run

Starts an embedded PostgreSQL (or uses --database-url's server), a fresh database migrated
to head and a real store process (`python -m seriesflow store`) on free ports. Loads the
catalog through StoreSeries, so it is what ingest makes: one update per series of 25
instances, two series per study, two studies per patient (1M instances: 10,000 patients,
20,000 studies, 40,000 series), names from several alphabets (García^José, Müller^Jürgen,
Yamada^Tarou=山田^太郎=やまだ^たろう, ...), study dates spread over 2014-2025, modality
mixes (CT, MR, PT with CT, ...), accession numbers, study and series descriptions. Then
ANALYZE (what autovacuum does soon after a bulk load), and untimed warm-up searches.

Timed, interleaved so the machine's noise falls on every kind alike, --searches of each
kind as GET /studies over one keep-alive HTTP connection, reading the whole body:
  patient_id     PatientID=<one patient>                         (exact)
  name_prefix    PatientName=Smi*&limit=101                      (prefix wildcard)
  accession      AccessionNumber=<one study>                     (exact)
  date_month     StudyDate=20210301-20210331&limit=101           (a month)
  modality       ModalitiesInStudy=CT&limit=101
  no_filter      limit=25                                        (a worklist's first page)
  fuzzy          PatientName=gar jos&fuzzymatching=true&limit=101
(101: what a study browser asks for to show 100 and know there are more.)

Baselines, measured in the same run and interleaved with the searches:
  - GET /healthz on the same connection: the HTTP and server floor (no SQL);
  - the search's own SQL (store.matching's compilation, store.find's page statement) run
    from this process with psycopg: PostgreSQL's share, the rest is the store's own work;
  - the equivalent gRPC ListStudies call, same filter and page size, where one exists
    (patient_id, name_prefix, accession, date_month, no_filter; ListStudies has no
    modality or fuzzy filter): what the QIDO door costs over the catalog's own list RPC.
Prints p50/p99 per kind and overall with the ratios; the last line is one JSON object with
every figure. Not pass/fail on speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from store_bench import CT_IMAGE, EXPLICIT_LE, ROOT_UID, _free_port, _quantile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seriesflow import migrations  # noqa: E402
from seriesflow.store import find, matching, probe  # noqa: E402
from seriesflow.v1 import series_store_pb2 as pb  # noqa: E402
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc  # noqa: E402

INSTANCES_PER_SERIES = 25
SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 2
PAGE = 101

# (alphabetic family, ideographic family or "", phonetic family or "")
FAMILIES = [
    ("Smith", "", ""), ("Smithson", "", ""), ("Johnson", "", ""), ("Williams", "", ""),
    ("Brown", "", ""), ("Jones", "", ""), ("Miller", "", ""), ("Davis", "", ""),
    ("García", "", ""), ("Rodríguez", "", ""), ("Martínez", "", ""), ("Hernández", "", ""),
    ("López", "", ""), ("González", "", ""), ("Müller", "", ""), ("Schäfer", "", ""),
    ("Weiß", "", ""), ("Nguyễn", "", ""), ("Trần", "", ""), ("Øvergaard", "", ""),
    ("Łukasik", "", ""), ("Dvořák", "", ""), ("O'Brien", "", ""), ("Lefèvre", "", ""),
    ("Kowalski", "", ""), ("Andersson", "", ""), ("Papadopoulos", "", ""), ("Kim", "", ""),
    ("Yamada", "山田", "やまだ"), ("Tanaka", "田中", "たなか"), ("Suzuki", "鈴木", "すずき"),
    ("Wang", "王", ""), ("Li", "李", ""), ("Zhang", "张", ""), ("Patel", "", ""),
    ("Singh", "", ""), ("Cohen", "", ""), ("Ivanov", "", ""), ("Smirnov", "", ""),
    ("Rossi", "", ""), ("Ferrari", "", ""), ("Dubois", "", ""), ("Fischer", "", ""),
    ("Taylor", "", ""), ("Thomas", "", ""), ("Moore", "", ""), ("Martin", "", ""),
    ("Jackson", "", ""), ("White", "", ""), ("Harris", "", ""),
]  # fmt: skip
GIVEN = [
    ("José", "", ""), ("Jürgen", "", ""), ("Zoë", "", ""), ("Anna", "", ""), ("John", "", ""),
    ("Mary", "", ""), ("Ana", "", ""), ("Łucja", "", ""), ("Søren", "", ""), ("François", "", ""),
    ("Ingrid", "", ""), ("Mohammed", "", ""), ("Priya", "", ""), ("Wei", "伟", ""),
    ("Tarou", "太郎", "たろう"), ("Hanako", "花子", "はなこ"), ("Elena", "", ""),
    ("Oliver", "", ""), ("Chloé", "", ""), ("Nikolai", "", ""), ("Aoife", "", ""),
    ("Mateo", "", ""), ("Sofía", "", ""), ("Jan", "", ""),
]  # fmt: skip
# (study modalities in series order, weight, study descriptions, series descriptions,
# body parts)
PROTOCOLS = [
    (("CT", "CT"), 30, ["CT CHEST W CONTRAST", "CT HEAD W/O CONTRAST", "CT ABD/PELVIS W"],
     ["Scout", "Axial 5mm", "Axial 1.25mm", "Coronal MPR"], ["CHEST", "HEAD", "ABDOMEN"]),
    (("MR", "MR"), 20, ["MR BRAIN W/WO", "MR KNEE LEFT", "MR L-SPINE W/O"],
     ["T1 SAG", "T2 AX", "FLAIR AX", "DWI"], ["BRAIN", "KNEE", "LSPINE"]),
    (("CR", "CR"), 12, ["XR CHEST 2 VIEWS", "XR HAND RIGHT"], ["PA", "LAT"], ["CHEST", "HAND"]),
    (("DX", "DX"), 10, ["XR KNEE 3 VIEWS", "XR PELVIS"], ["AP", "LAT"], ["KNEE", "PELVIS"]),
    (("US", "US"), 10, ["US ABDOMEN COMPLETE", "US THYROID"], ["Cine", "Stills"],
     ["ABDOMEN", "NECK"]),
    (("PT", "CT"), 8, ["PET/CT WHOLE BODY FDG"], ["PET AC", "CT AC"], ["WHOLEBODY"]),
    (("MG", "MG"), 7, ["MAMMO SCREENING BILAT"], ["L CC", "R MLO"], ["BREAST"]),
    (("NM", "CT"), 3, ["NM BONE SCAN SPECT/CT"], ["SPECT", "CT LOW DOSE"], ["WHOLEBODY"]),
]  # fmt: skip
PHYSICIANS = ["House^Gregory", "Grey^Meredith", "Ross^Doug", "Becker^Sonja", "Åberg^Lars"]
FIRST_DAY = dt.date(2014, 1, 1)
DAYS = (dt.date(2025, 12, 31) - FIRST_DAY).days + 1


def _pn(family: tuple[str, str, str], given: tuple[str, str, str]) -> str:
    groups = [f"{family[0]}^{given[0]}"]
    if family[1]:
        groups.append(f"{family[1]}^{given[1]}" if given[1] else family[1])
        if family[2]:
            groups.append(f"{family[2]}^{given[2]}" if given[2] else family[2])
    return "=".join(groups)


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    family: str  # alphabetic
    given: str


@dataclass(frozen=True)
class Study:
    uid: str
    patient: Patient
    date: str
    accession: str
    protocol: int


class Catalog:
    """The generated catalog: deterministic (seeded), built one series at a time."""

    def __init__(self, run: str, instances: int, seed: int = 12) -> None:
        per_patient = INSTANCES_PER_SERIES * SERIES_PER_STUDY * STUDIES_PER_PATIENT
        self.patients_n = max(1, instances // per_patient)
        self.run = run
        rng = random.Random(seed)
        weights = [p[1] for p in PROTOCOLS]
        self.patients: list[Patient] = []
        self.studies: list[Study] = []
        for p in range(self.patients_n):
            family, given = rng.choice(FAMILIES), rng.choice(GIVEN)
            patient = Patient(f"PID{p + 1:07d}", _pn(family, given), family[0], given[0])
            self.patients.append(patient)
            for _ in range(STUDIES_PER_PATIENT):
                n = len(self.studies) + 1
                day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
                protocol = rng.choices(range(len(PROTOCOLS)), weights)[0]
                self.studies.append(
                    Study(
                        f"{ROOT_UID}.{run}.1.{n}",
                        patient,
                        day.strftime("%Y%m%d"),
                        f"A{20140000 + n * 7:09d}",
                        protocol,
                    )
                )
        self.rng = rng
        self.series_n = len(self.studies) * SERIES_PER_STUDY
        self.instances_n = self.series_n * INSTANCES_PER_SERIES

    def updates(self, part: int, parts: int) -> Iterator[pb.SeriesUpdate]:
        """The series of every patient whose index is `part` modulo `parts` (a patient's
        studies stay on one stream: no two streams write one patient at a time)."""
        rng = random.Random(f"{self.run}-{part}")
        received = Timestamp()
        t0 = time.time() - 86_400
        for s_index, study in enumerate(self.studies):
            if (s_index // STUDIES_PER_PATIENT) % parts != part:
                continue
            modalities, _, descriptions, series_descs, parts_examined = PROTOCOLS[study.protocol]
            for k, modality in enumerate(modalities):
                se = s_index * SERIES_PER_STUDY + k + 1
                series_uid = f"{ROOT_UID}.{self.run}.2.{se}"
                items = []
                for n in range(1, INSTANCES_PER_SERIES + 1):
                    received.FromNanoseconds(int((t0 + se + n / 1000) * 1e9))
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
                patient = study.patient
                yield pb.SeriesUpdate(
                    update_id=f"qido-{self.run}-{se}",
                    patient=pb.PatientAttributes(
                        patient_id=patient.patient_id,
                        patient_name=patient.name,
                        patient_birth_date=f"{1930 + int(patient.patient_id[3:]) % 80}0615",
                        patient_sex="FMO"[int(patient.patient_id[3:]) % 3],
                    ),
                    study=pb.StudyAttributes(
                        study_instance_uid=study.uid,
                        study_date=study.date,
                        study_time=f"{8 + s_index % 10:02d}{s_index % 60:02d}00",
                        study_description=descriptions[s_index % len(descriptions)],
                        accession_number=study.accession,
                        study_id=str(s_index % 10_000),
                        referring_physician_name=PHYSICIANS[s_index % len(PHYSICIANS)],
                    ),
                    series=pb.SeriesAttributes(
                        series_instance_uid=series_uid,
                        modality=modality,
                        series_number=k + 1,
                        series_description=rng.choice(series_descs),
                        body_part_examined=rng.choice(parts_examined),
                        manufacturer="ACME Medical",
                        station_name=f"{modality}0{s_index % 3 + 1}",
                        institution_name="Hôpital Saint-Éloi",
                        series_date=study.date,
                    ),
                    instances=items,
                    source=pb.Source(
                        calling_ae_title=f"{modality}0{s_index % 3 + 1}",
                        called_ae_title="SERIESFLOW",
                        receiver_id="qido-bench",
                    ),
                    completion_reason=pb.COMPLETION_REASON_IDLE,
                )


class Store:
    """A store process with its HTTP API on a free port too (store_bench's has none)."""

    def __init__(self, url: str, workdir: str) -> None:
        self.grpc_port, self.http_port = _free_port(), _free_port()
        env = dict(os.environ, SERIESFLOW_DATABASE_URL=url, SERIESFLOW_LOG_LEVEL="WARNING")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seriesflow",
                "store",
                "--listen-host",
                "127.0.0.1",
                "--data-dir",
                workdir,
                "--grpc-port",
                str(self.grpc_port),
                "--store-metrics-port",
                str(_free_port()),
                "--store-http-port",
                str(self.http_port),
            ],
            cwd=ROOT,
            env=env,
        )
        self.address = f"127.0.0.1:{self.grpc_port}"
        if not probe.wait_serving(self.address, lambda: self.proc.poll() is None, 60):
            self.stop()
            raise SystemExit("the store did not become SERVING within 60 s")
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("the store's HTTP API did not answer /healthz within 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def load(address: str, catalog: Catalog, streams: int) -> float:
    """Stream the catalog through StoreSeries on `streams` streams; seconds to the last ack."""
    acked = [0] * streams
    failures: list[str] = []

    def one(part: int) -> None:
        try:
            with grpc.insecure_channel(address) as ch:
                stub = pb_grpc.SeriesStoreStub(ch)
                for ack in stub.StoreSeries(catalog.updates(part, streams), timeout=3600):
                    if not ack.ok:
                        failures.append(f"update {ack.update_id}: {ack.error.message}")
                        return
                    acked[part] += 1
        except grpc.RpcError as exc:
            failures.append(f"stream {part}: {exc}")

    threads = [threading.Thread(target=one, args=(p,)) for p in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if failures:
        raise SystemExit(f"loading failed: {failures[0]}")
    if sum(acked) != catalog.series_n:
        raise SystemExit(f"expected {catalog.series_n} acks, got {sum(acked)}")
    return seconds


@dataclass
class Search:
    kind: str
    query: dict[str, str]
    grpc: pb.ListStudiesRequest | None


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


KINDS = ("patient_id", "name_prefix", "accession", "date_month", "modality", "no_filter", "fuzzy")


def searches(catalog: Catalog, kind: str, count: int, rng: random.Random) -> list[Search]:
    out = []
    for _ in range(count):
        study = rng.choice(catalog.studies)
        patient = study.patient
        if kind == "patient_id":
            out.append(
                Search(
                    kind,
                    {"PatientID": patient.patient_id},
                    pb.ListStudiesRequest(patient_id=patient.patient_id, page_size=PAGE),
                )
            )
        elif kind == "name_prefix":
            prefix = f"{patient.family[:3]}*"
            out.append(
                Search(
                    kind,
                    {"PatientName": prefix, "limit": str(PAGE)},
                    pb.ListStudiesRequest(patient_name=prefix, page_size=PAGE),
                )
            )
        elif kind == "accession":
            out.append(
                Search(
                    kind,
                    {"AccessionNumber": study.accession},
                    pb.ListStudiesRequest(accession_number=study.accession, page_size=PAGE),
                )
            )
        elif kind == "date_month":
            first = dt.date(rng.randrange(2014, 2026), rng.randrange(1, 13), 1)
            last = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
            a, b = first.strftime("%Y%m%d"), last.strftime("%Y%m%d")
            out.append(
                Search(
                    kind,
                    {"StudyDate": f"{a}-{b}", "limit": str(PAGE)},
                    pb.ListStudiesRequest(study_date_from=a, study_date_to=b, page_size=PAGE),
                )
            )
        elif kind == "modality":
            modality = rng.choice(["CT", "CT", "MR", "CR", "US", "PT", "MG"])
            out.append(Search(kind, {"ModalitiesInStudy": modality, "limit": str(PAGE)}, None))
        elif kind == "no_filter":
            out.append(Search(kind, {"limit": "25"}, pb.ListStudiesRequest(page_size=25)))
        elif kind == "fuzzy":
            # What a user types: the beginnings of both names, lower case, no accents.
            words = f"{_fold(patient.family)[:3]} {_fold(patient.given)[:3]}"
            query = {"PatientName": words, "fuzzymatching": "true", "limit": str(PAGE)}
            out.append(Search(kind, query, None))
    return out


class Http:
    """One keep-alive HTTP/1.1 connection; `get` times the whole exchange."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[float, int, bytes]:
        start = time.perf_counter()
        self.conn.request("GET", path, headers={"Accept": "application/dicom+json"})
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.getheader("Connection", "").lower() == "close":
            raise SystemExit(f"the store closed the connection after {path}")
        return elapsed, response.status, body


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _summary(values: list[float]) -> tuple[float, float]:
    return _quantile(values, 0.5), _quantile(values, 0.99)


class Recorder:
    """Runs one search with its baselines (QIDO, /healthz, ListStudies where one exists)
    and keeps the timings of the recorded ones."""

    def __init__(self, store: Store, url: str) -> None:
        self.client = Http(store.http_port)
        self.sql_conn = psycopg.connect(url, autocommit=True)
        self.sql: dict[str, list[float]] = {k: [] for k in KINDS}
        self.channel = grpc.insecure_channel(store.address)
        self.stub = pb_grpc.SeriesStoreStub(self.channel)
        self.qido: dict[str, list[float]] = {k: [] for k in KINDS}
        self.grpc: dict[str, list[float]] = {k: [] for k in KINDS}
        self.results: dict[str, list[int]] = {k: [] for k in KINDS}
        self.bytes: dict[str, int] = {k: 0 for k in KINDS}
        self.mismatches: dict[str, int] = {k: 0 for k in KINDS}
        self.healthz: list[float] = []

    def run(self, search: Search, record: bool) -> None:
        path = "/studies?" + urllib.parse.urlencode(search.query, quote_via=urllib.parse.quote)
        elapsed, status, body = self.client.get(path)
        if status not in (200, 204):
            raise SystemExit(f"GET {path}: {status} {body[:300]!r}")
        found = len(json.loads(body)) if status == 200 else 0
        h_elapsed, h_status, _ = self.client.get("/healthz")
        if h_status != 200:
            raise SystemExit(f"GET /healthz: {h_status}")
        sql_elapsed, sql_rows = self._sql(search)
        if sql_rows != found:
            raise SystemExit(f"{path}: QIDO returned {found} matches, its SQL {sql_rows}")
        rpc: tuple[float, int] | None = None
        if search.grpc is not None:
            start = time.perf_counter()
            response = self.stub.ListStudies(search.grpc, timeout=120)
            rpc = (time.perf_counter() - start, len(response.studies))
        if not record:
            return
        self.qido[search.kind].append(elapsed)
        self.results[search.kind].append(found)
        self.bytes[search.kind] += len(body)
        self.healthz.append(h_elapsed)
        self.sql[search.kind].append(sql_elapsed)
        if rpc is not None:
            self.grpc[search.kind].append(rpc[0])
            # Same filter, same page size: a different count would mean not the same search.
            self.mismatches[search.kind] += rpc[1] != found

    def _sql(self, search: Search) -> tuple[float, int]:
        """The statement the store runs for this search (its first and, here, only page),
        run from this process: PostgreSQL's share of the search, with one round trip."""
        keys = [(k, v) for k, v in search.query.items() if k not in ("limit", "fuzzymatching")]
        fuzzy = search.query.get("fuzzymatching") == "true"
        compiled = matching.compile_query(matching.Level.STUDY, keys, fuzzy=fuzzy)
        limit = int(search.query.get("limit", "0"))
        params = dict(compiled.params, rows=min(find.PAGE_ROWS, limit or find.PAGE_ROWS))
        sql = find._page_sql(compiled, after=False, offset=False)
        start = time.perf_counter()
        rows = self.sql_conn.execute(sql, params).fetchall()
        return time.perf_counter() - start, len(rows)

    def close(self) -> None:
        self.sql_conn.close()
        self.channel.close()
        self.client.conn.close()


def measure(
    store: Store, url: str, catalog: Catalog, per_kind: int, warmup: int, seed: int
) -> dict[str, object]:
    rng = random.Random(seed)
    plan = {k: searches(catalog, k, per_kind + warmup, rng) for k in KINDS}
    rec = Recorder(store, url)
    try:
        for i in range(per_kind + warmup):
            # Every kind once per round, in a fresh order: a noisy second hits them alike.
            kinds = list(KINDS)
            rng.shuffle(kinds)
            for kind in kinds:
                rec.run(plan[kind][i], record=i >= warmup)
    finally:
        rec.close()

    h50, h99 = _summary(rec.healthz)
    kinds_out: dict[str, dict[str, float | int | None]] = {}
    for kind in KINDS:
        q50, q99 = _summary(rec.qido[kind])
        s50, s99 = _summary(rec.sql[kind])
        entry: dict[str, float | int | None] = {
            "searches": len(rec.qido[kind]),
            "qido_p50_ms": _ms(q50),
            "qido_p99_ms": _ms(q99),
            "results_mean": round(statistics.fmean(rec.results[kind]), 1),
            "bytes_mean": round(rec.bytes[kind] / len(rec.qido[kind])),
            "p50_vs_healthz": round(q50 / h50, 2),
            "p99_vs_healthz": round(q99 / h99, 2),
            "sql_p50_ms": _ms(s50),
            "sql_p99_ms": _ms(s99),
            "p50_vs_sql": round(q50 / s50, 2),
            "p99_vs_sql": round(q99 / s99, 2),
            "grpc_p50_ms": None,
            "grpc_p99_ms": None,
            "p50_vs_grpc": None,
            "p99_vs_grpc": None,
        }
        if rec.grpc[kind]:
            g50, g99 = _summary(rec.grpc[kind])
            entry.update(
                grpc_p50_ms=_ms(g50),
                grpc_p99_ms=_ms(g99),
                p50_vs_grpc=round(q50 / g50, 2),
                p99_vs_grpc=round(q99 / g99, 2),
                count_mismatches=rec.mismatches[kind],
            )
        kinds_out[kind] = entry
    every = [t for k in KINDS for t in rec.qido[k]]
    paired = [t for k in KINDS if rec.grpc[k] for t in rec.qido[k]]
    every_grpc = [t for k in KINDS for t in rec.grpc[k]]
    o50, o99 = _summary(every)
    os50, os99 = _summary([t for k in KINDS for t in rec.sql[k]])
    pq50, pq99 = _summary(paired)
    g50, g99 = _summary(every_grpc)
    return {
        "healthz_p50_ms": _ms(h50),
        "healthz_p99_ms": _ms(h99),
        "kinds": kinds_out,
        "overall": {
            "searches": len(every),
            "qido_p50_ms": _ms(o50),
            "qido_p99_ms": _ms(o99),
            "p50_vs_healthz": round(o50 / h50, 2),
            "p99_vs_healthz": round(o99 / h99, 2),
            "sql_p50_ms": _ms(os50),
            "sql_p99_ms": _ms(os99),
            "p50_vs_sql": round(o50 / os50, 2),
            "p99_vs_sql": round(o99 / os99, 2),
            # Only the kinds ListStudies can express, on both sides.
            "paired_qido_p50_ms": _ms(pq50),
            "paired_qido_p99_ms": _ms(pq99),
            "paired_grpc_p50_ms": _ms(g50),
            "paired_grpc_p99_ms": _ms(g99),
            "paired_p50_vs_grpc": round(pq50 / g50, 2),
            "paired_p99_vs_grpc": round(pq99 / g99, 2),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=1_000_000, help="catalog size")
    parser.add_argument("--searches", type=int, default=200, help="timed searches per kind")
    parser.add_argument("--warmup", type=int, default=10, help="untimed searches per kind first")
    parser.add_argument("--streams", type=int, default=2, help="StoreSeries streams loading")
    parser.add_argument("--quick", action="store_true", help="20,000 instances, 50 searches")
    parser.add_argument("--database-url", help="PostgreSQL server to use (default: embedded)")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.searches = 20_000, 50

    embedded = None
    workdir = tempfile.mkdtemp(prefix="sf-qido-bench-")
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
        catalog = Catalog(str(int(time.time())), args.instances)
        store = Store(url, workdir)
        load_seconds = load(store.address, catalog, args.streams)
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM series),"
                " (SELECT count(*) FROM studies), (SELECT count(*) FROM patients)"
            ).fetchone()
            assert row is not None
            if tuple(row) != (
                catalog.instances_n,
                catalog.series_n,
                len(catalog.studies),
                catalog.patients_n,
            ):
                raise SystemExit(f"catalog holds {row}, expected otherwise")
            start = time.perf_counter()
            conn.execute("ANALYZE")
            analyze_seconds = time.perf_counter() - start
            db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        start = time.perf_counter()
        figures = measure(store, url, catalog, args.searches, args.warmup, seed=7)
        search_seconds = time.perf_counter() - start
    finally:
        if store is not None:
            store.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    figures = {
        "instances": catalog.instances_n,
        "series": catalog.series_n,
        "studies": len(catalog.studies),
        "patients": catalog.patients_n,
        "load_seconds": round(load_seconds, 2),
        "load_instances_per_s": round(catalog.instances_n / load_seconds),
        "load_streams": args.streams,
        "analyze_seconds": round(analyze_seconds, 2),
        "database_mb": round((db_bytes[0] if db_bytes else 0) / 2**20),
        "search_seconds": round(search_seconds, 2),
        **figures,
    }
    print(
        f"catalog: {catalog.instances_n:,} instances, {catalog.series_n:,} series, "
        f"{len(catalog.studies):,} studies, {catalog.patients_n:,} patients, "
        f"{figures['database_mb']} MB; loaded through StoreSeries in {load_seconds:.1f} s "
        f"({figures['load_instances_per_s']:,}/s on {args.streams} streams)"
    )
    print(
        f"GET /healthz (HTTP floor): p50 {figures['healthz_p50_ms']} ms, "
        f"p99 {figures['healthz_p99_ms']} ms"
    )
    columns = [
        ("p50 ms", "qido_p50_ms"), ("p99 ms", "qido_p99_ms"),
        ("x hz50", "p50_vs_healthz"), ("x hz99", "p99_vs_healthz"),
        ("sql p50", "sql_p50_ms"), ("sql p99", "sql_p99_ms"),
        ("x sql50", "p50_vs_sql"), ("x sql99", "p99_vs_sql"),
        ("rpc p50", "grpc_p50_ms"), ("rpc p99", "grpc_p99_ms"),
        ("x rpc50", "p50_vs_grpc"), ("x rpc99", "p99_vs_grpc"),
        ("results", "results_mean"),
    ]  # fmt: skip
    kinds = figures["kinds"]
    overall = figures["overall"]
    assert isinstance(kinds, dict) and isinstance(overall, dict)
    print(f"{'QIDO /studies':<13}" + "".join(f"{h:>9}" for h, _ in columns))
    for kind, row in [*kinds.items(), ("overall", overall)]:
        cells = (row.get(key) for _, key in columns)
        print(f"{kind:<13}" + "".join(f"{'-' if c is None else c:>9}" for c in cells))
    print(
        "(x hz: QIDO / GET /healthz; sql: the search's own SQL from this process;"
        " rpc: ListStudies, same filter and page size; results: mean matches)"
    )
    print(
        f"kinds ListStudies has: QIDO p50 {overall['paired_qido_p50_ms']} / p99 "
        f"{overall['paired_qido_p99_ms']} ms, ListStudies p50 {overall['paired_grpc_p50_ms']} /"
        f" p99 {overall['paired_grpc_p99_ms']} ms = {overall['paired_p50_vs_grpc']}x /"
        f" {overall['paired_p99_vs_grpc']}x"
    )
    mismatched = {
        k: v.get("count_mismatches") for k, v in kinds.items() if v.get("count_mismatches")
    }
    if mismatched:
        print(f"note: QIDO and ListStudies returned different counts: {mismatched}")
    print(json.dumps(figures, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
