"""The catalog at scale: grow it through StoreSeries and time the query API at checkpoints.

    .venv/bin/python bench/scale_bench.py                       # 0, 1M, 5M, 10M instances
    .venv/bin/python bench/scale_bench.py --sizes 0,50k,200k    # a development run
    .venv/bin/python bench/scale_bench.py --sizes 0,2000 --samples 20   # a smoke run

Starts an embedded PostgreSQL (or uses --database-url's / SERIESFLOW_DATABASE_URL's
server), a fresh database migrated to head and a real store process on free ports. The
catalog grows only through the real StoreSeries stream, in chunks of whole patients
(--chunk instances each, built before they are timed, streamed on --streams streams with
a patient's series on one stream), to each checkpoint of --sizes in turn. The catalog is
deterministic (--seed): patients with 1-6 studies (mean ~2), names from several
alphabets drawn with a Zipf-like skew (Smith is common, Łukasik rare) including DOE^…
for the prefix search; studies by protocol (CT, MR, CR, DX, US, PET/CT, MG, NM/CT) with
each protocol's number of series and each modality's instances per series, scaled so
the mean is --per-series (default 100: 10M instances is about 100,000 series); study
dates over 2014-2025; a representative header per series (for GetAttributes). Checkpoint
0 holds only the probe series: one CT series of 1,000 instances (patient DOE^PROBE) that
GetSeries reads at every checkpoint.

At each checkpoint: VACUUM ANALYZE (what autovacuum does after a bulk load), the
database and table sizes, then --samples timed calls of each kind below (after --warmup
untimed ones), interleaved in a fresh order every round so the machine's noise falls on
every kind alike; gRPC on one channel, QIDO-RS on one keep-alive HTTP connection:
  list_series_first        ListSeries, first page (100), no filter
  list_series_mod_date     ListSeries modality=<CT|MR|...> + a month of study dates
  list_series_patient_id   ListSeries patient_id=<one patient>
  list_series_patient_name ListSeries patient_name=<one patient's alphabetic name, exact>
  list_series_name_prefix  ListSeries patient_name=DOE*
  get_series_1000          GetSeries of the 1,000-instance probe series (all instances)
  get_attributes           GetAttributes of a random series, 6 attributes
  list_studies_first       ListStudies, first page (100), no filter
  qido_name_prefix         GET /studies?PatientName=DOE*&limit=101
  qido_fuzzy               GET /studies?PatientName=<3 letters> <3 letters>&fuzzymatching=true
Ingest is reported per step: instances of the step / seconds streaming them (first send
to last ack, acked after commit), and the rate of the step's last chunk (the rate "at"
the checkpoint's size). At the last checkpoint (every one with --explain-all) each
kind's SQL, as the store's own code builds it, is run under EXPLAIN (ANALYZE, BUFFERS):
the plan is summarised (with rows per node) and a Seq Scan on a big table (over
--big-table rows) or a Sort of more than that many rows is flagged; --explain-text prints
the whole plans. EXPLAIN plans the bare SELECT, which is how the store's statements are
planned: list pages (read through a cursor) set cursor_tuple_fraction to 1 and QIDO
statements are never prepared (see store.queries._page and store.find._rows). Without
that, a page that does not fill (ListSeries of MG in one month) took ~100 ms here while
its EXPLAIN said 2 ms.

Prints a table; the last line is one JSON object with every figure. Not pass/fail on
speed: the issue's targets (ingest at the last size within 20 % of the first step's, every
p99 <= 50 ms) are reported as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from bench_db import bench_database
from google.protobuf.timestamp_pb2 import Timestamp
from qido_bench import FAMILIES, GIVEN, PHYSICIANS, Http, Store, _fold, _pn
from store_bench import CT_IMAGE, EXPLICIT_LE, ROOT_UID, _quantile, stream

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seriesflow import migrations  # noqa: E402
from seriesflow.store import find, matching, queries  # noqa: E402
from seriesflow.store.attributes import get_attributes  # noqa: E402
from seriesflow.v1 import series_store_pb2 as pb  # noqa: E402
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc  # noqa: E402

PROBE_INSTANCES = 1000
FIRST_DAY = dt.date(2014, 1, 1)
DAYS = (dt.date(2025, 12, 31) - FIRST_DAY).days + 1
SOP_CLASS = {
    "CT": CT_IMAGE,
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
}
# Raw instances per series by modality (uniform in the range), scaled to --per-series.
INSTANCES = {
    "CT": (40, 700), "MR": (20, 250), "CR": (1, 2), "DX": (1, 3), "US": (1, 60),
    "PT": (100, 400), "MG": (1, 1), "NM": (60, 180),
}  # fmt: skip


@dataclass(frozen=True)
class Protocol:
    modalities: tuple[str, ...]  # cycled over the study's series
    weight: int
    series: tuple[int, int]  # series per study, inclusive range
    descriptions: tuple[str, ...]
    series_descriptions: tuple[str, ...]
    body_parts: tuple[str, ...]


PROTOCOLS = (
    Protocol(("CT",), 30, (2, 6), ("CT CHEST W CONTRAST", "CT HEAD W/O", "CT ABD/PELVIS W"),
             ("Scout", "Axial 5mm", "Axial 1.25mm", "Coronal MPR"), ("CHEST", "HEAD", "ABDOMEN")),
    Protocol(("MR",), 20, (4, 10), ("MR BRAIN W/WO", "MR KNEE LEFT", "MR L-SPINE W/O"),
             ("T1 SAG", "T2 AX", "FLAIR AX", "DWI"), ("BRAIN", "KNEE", "LSPINE")),
    Protocol(("CR",), 12, (1, 3), ("XR CHEST 2 VIEWS", "XR HAND RIGHT"), ("PA", "LAT"),
             ("CHEST", "HAND")),
    Protocol(("DX",), 10, (1, 3), ("XR KNEE 3 VIEWS", "XR PELVIS"), ("AP", "LAT"),
             ("KNEE", "PELVIS")),
    Protocol(("US",), 10, (1, 4), ("US ABDOMEN COMPLETE", "US THYROID"), ("Cine", "Stills"),
             ("ABDOMEN", "NECK")),
    Protocol(("PT", "CT"), 8, (3, 5), ("PET/CT WHOLE BODY FDG",), ("PET AC", "CT AC"),
             ("WHOLEBODY",)),
    Protocol(("MG",), 7, (4, 4), ("MAMMO SCREENING BILAT",), ("L CC", "R MLO"), ("BREAST",)),
    Protocol(("NM", "CT"), 3, (2, 3), ("NM BONE SCAN SPECT/CT",), ("SPECT", "CT LOW DOSE"),
             ("WHOLEBODY",)),
)  # fmt: skip
# DOE for the prefix search, ranked as a common name would be.
NAMES = [FAMILIES[0], ("Doe", "", ""), *FAMILIES[1:]]
ATTRIBUTES = ["PatientName", "StudyDescription", "SeriesDescription", "ImageType",
              "00180050", "(0028,0030)"]  # fmt: skip


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 0, 50k, 1M, 2.5M")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(part) for part in text.split(",")]
    if sizes != sorted(sizes) or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError("sizes must increase")
    return sizes


@dataclass
class Patient:
    patient_id: str
    name: str
    family: str
    given: str


@dataclass
class Grown:
    """What the catalog holds so far (for choosing query arguments)."""

    instances: int = 0
    series: list[str] = field(default_factory=list)
    studies: int = 0
    patients: list[Patient] = field(default_factory=list)


class Catalog:
    """The deterministic catalog, produced a patient at a time."""

    def __init__(self, run: str, per_series: float, seed: int) -> None:
        self.run = run
        self.rng = random.Random(seed)
        self.grown = Grown()
        self.name_weights = [1 / (rank + 1) ** 0.8 for rank in range(len(NAMES))]
        self.protocol_weights = [p.weight for p in PROTOCOLS]
        self.scale = self._scale(per_series, random.Random(seed + 1))
        self.received = time.time() - 30 * 86_400
        self._series = 0
        self._study = 0

    def _raw_series(self, rng: random.Random) -> list[tuple[str, float]]:
        protocol = rng.choices(PROTOCOLS, self.protocol_weights)[0]
        count = rng.randint(*protocol.series)
        out = []
        for k in range(count):
            modality = protocol.modalities[k % len(protocol.modalities)]
            low, high = INSTANCES[modality]
            out.append((modality, rng.uniform(low, high)))
        return out

    def _scale(self, per_series: float, rng: random.Random) -> float:
        """The factor on raw instance counts that makes the mean `per_series`."""
        raws = [raw for _ in range(5000) for _, raw in self._raw_series(rng)]
        scale = per_series / statistics.fmean(raws)
        for _ in range(5):  # rounding and the floor of 1 move the mean: correct for them
            mean = statistics.fmean(max(1, round(r * scale)) for r in raws)
            scale *= per_series / mean
        return scale

    def _patient(self) -> Patient:
        n = len(self.grown.patients) + 1
        family = self.rng.choices(NAMES, self.name_weights)[0]
        given = self.rng.choice(GIVEN)
        return Patient(f"SC{n:08d}", _pn(family, given), family[0], given[0])

    def probe(self) -> tuple[pb.SeriesUpdate, str]:
        patient = Patient("SCPROBE", "Doe^Probe", "Doe", "Probe")
        study = self._study_fields(patient, "CT HEAD W/O")
        update = self._update(patient, study, "CT", PROBE_INSTANCES, 1, "Axial 0.625mm", "HEAD")
        self.grown.patients.append(patient)
        return update, update.series.series_instance_uid

    def _study_fields(self, patient: Patient, description: str) -> pb.StudyAttributes:
        self._study += 1
        self.grown.studies += 1
        day = FIRST_DAY + dt.timedelta(days=self.rng.randrange(DAYS))
        n = self._study
        return pb.StudyAttributes(
            study_instance_uid=f"{ROOT_UID}.{self.run}.1.{n}",
            study_date=day.strftime("%Y%m%d"),
            study_time=f"{7 + n % 12:02d}{n % 60:02d}{n * 7 % 60:02d}",
            study_description=description,
            accession_number=f"A{20140000 + n * 7:09d}",
            study_id=str(n % 100_000),
            referring_physician_name=PHYSICIANS[n % len(PHYSICIANS)],
        )

    def _update(
        self,
        patient: Patient,
        study: pb.StudyAttributes,
        modality: str,
        instances: int,
        number: int,
        description: str,
        body_part: str,
    ) -> pb.SeriesUpdate:
        self._series += 1
        se = self._series
        uid = f"{ROOT_UID}.{self.run}.2.{se}"
        received = Timestamp()
        items = []
        for i in range(1, instances + 1):
            received.FromNanoseconds(int((self.received + se + i / 10_000) * 1e9))
            items.append(
                pb.Instance(
                    sop_instance_uid=f"{uid}.{i}",
                    sop_class_uid=SOP_CLASS[modality],
                    instance_number=i,
                    transfer_syntax_uid=EXPLICIT_LE,
                    size_bytes=526_000 + i,
                    received_at=received,
                    slice_position=-0.625 * i,
                )
            )
        middle = f"{uid}.{(instances + 1) // 2}"
        station = f"{modality}0{se % 3 + 1}"
        header = {
            "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]},
            "00080016": {"vr": "UI", "Value": [SOP_CLASS[modality]]},
            "00080018": {"vr": "UI", "Value": [middle]},
            "00080020": {"vr": "DA", "Value": [study.study_date]},
            "00080060": {"vr": "CS", "Value": [modality]},
            "00080070": {"vr": "LO", "Value": ["ACME Medical"]},
            "00081010": {"vr": "SH", "Value": [station]},
            "00081030": {"vr": "LO", "Value": [study.study_description]},
            "0008103E": {"vr": "LO", "Value": [description]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": patient.name.split("=")[0]}]},
            "00100020": {"vr": "LO", "Value": [patient.patient_id]},
            "00180015": {"vr": "CS", "Value": [body_part]},
            "00180050": {"vr": "DS", "Value": [0.625]},
            "00181030": {"vr": "LO", "Value": [f"{study.study_description} PROTOCOL"]},
            "0020000D": {"vr": "UI", "Value": [study.study_instance_uid]},
            "0020000E": {"vr": "UI", "Value": [uid]},
            "00200013": {"vr": "IS", "Value": [(instances + 1) // 2]},
            "00200032": {"vr": "DS", "Value": [-250.0, -250.0, -0.625 * (instances + 1) // 2]},
            "00200037": {"vr": "DS", "Value": [1, 0, 0, 0, 1, 0]},
            "00280010": {"vr": "US", "Value": [512]},
            "00280011": {"vr": "US", "Value": [512]},
            "00280030": {"vr": "DS", "Value": [0.488, 0.488]},
            "00281050": {"vr": "DS", "Value": [40]},
            "00281051": {"vr": "DS", "Value": [400]},
        }
        self.grown.instances += instances
        self.grown.series.append(uid)
        return pb.SeriesUpdate(
            update_id=f"scale-{self.run}-{se}",
            patient=pb.PatientAttributes(
                patient_id=patient.patient_id,
                patient_name=patient.name,
                patient_birth_date=f"{1930 + se % 80}0615",
                patient_sex="FMO"[len(patient.name) % 3],
            ),
            study=study,
            series=pb.SeriesAttributes(
                series_instance_uid=uid,
                modality=modality,
                series_number=number,
                series_description=description,
                body_part_examined=body_part,
                manufacturer="ACME Medical",
                station_name=station,
                institution_name="Hôpital Saint-Éloi",
                series_date=study.study_date,
            ),
            instances=items,
            source=pb.Source(
                calling_ae_title=station, called_ae_title="SERIESFLOW", receiver_id="scale"
            ),
            completion_reason=pb.COMPLETION_REASON_IDLE,
            representative_header_json=json.dumps(header, ensure_ascii=False),
            representative_sop_instance_uid=middle,
        )

    def patient_updates(self) -> list[pb.SeriesUpdate]:
        """Every series of one new patient."""
        patient = self._patient()
        self.grown.patients.append(patient)
        studies = min(6, 1 + int(self.rng.expovariate(1.0)))
        out = []
        for _ in range(studies):
            protocol = self.rng.choices(PROTOCOLS, self.protocol_weights)[0]
            study = self._study_fields(patient, self.rng.choice(protocol.descriptions))
            for k in range(self.rng.randint(*protocol.series)):
                modality = protocol.modalities[k % len(protocol.modalities)]
                low, high = INSTANCES[modality]
                count = max(1, round(self.rng.uniform(low, high) * self.scale))
                out.append(
                    self._update(
                        patient,
                        study,
                        modality,
                        count,
                        k + 1,
                        self.rng.choice(protocol.series_descriptions),
                        self.rng.choice(protocol.body_parts),
                    )
                )
        return out


def load_chunk(address: str, parts: list[list[pb.SeriesUpdate]]) -> float:
    """Stream `parts` on one StoreSeries stream each; seconds to the last ack."""
    failures: list[BaseException] = []

    def one(updates: list[pb.SeriesUpdate]) -> None:
        try:
            if stream(address, updates, []) != len(updates):
                raise RuntimeError("a stream ended before every update was acked")
        except BaseException as exc:  # reported below, in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(p,)) for p in parts if p]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"loading failed: {failures[0]}")
    return time.perf_counter() - start


@dataclass
class Step:
    instances: int = 0
    seconds: float = 0.0
    last_chunk_rate: float = 0.0


def grow(address: str, catalog: Catalog, target: int, chunk: int, streams: int) -> Step:
    """Grow the catalog to at least `target` instances (whole patients), timing only the
    streaming."""
    step = Step()
    while catalog.grown.instances < target:
        parts: list[list[pb.SeriesUpdate]] = [[] for _ in range(streams)]
        before = catalog.grown.instances
        n = 0
        while catalog.grown.instances < min(target, before + chunk):
            parts[n % streams].extend(catalog.patient_updates())
            n += 1
        seconds = load_chunk(address, parts)
        added = catalog.grown.instances - before
        step.instances += added
        step.seconds += seconds
        step.last_chunk_rate = added / seconds
    return step


# --- The calls timed at a checkpoint -----------------------------------------------------


@dataclass
class Call:
    kind: str
    rpc: str  # a SeriesStore method, or "qido"
    request: Any  # the request message, or the QIDO query parameters


def _month(rng: random.Random) -> tuple[str, str]:
    first = dt.date(rng.randrange(2014, 2026), rng.randrange(1, 13), 1)
    last = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    return first.strftime("%Y%m%d"), last.strftime("%Y%m%d")


def make_call(kind: str, grown: Grown, probe_uid: str, rng: random.Random) -> Call:
    patient = rng.choice(grown.patients)
    if kind == "list_series_first":
        return Call(kind, "ListSeries", pb.ListSeriesRequest(page_size=100))
    if kind == "list_series_mod_date":
        a, b = _month(rng)
        modality = rng.choice(["CT", "CT", "MR", "CR", "US", "PT", "DX", "MG"])
        return Call(
            kind,
            "ListSeries",
            pb.ListSeriesRequest(
                modality=modality, study_date_from=a, study_date_to=b, page_size=100
            ),
        )
    if kind == "list_series_patient_id":
        return Call(kind, "ListSeries", pb.ListSeriesRequest(patient_id=patient.patient_id))
    if kind == "list_series_patient_name":
        name = patient.name.split("=")[0]
        return Call(kind, "ListSeries", pb.ListSeriesRequest(patient_name=name))
    if kind == "list_series_name_prefix":
        return Call(kind, "ListSeries", pb.ListSeriesRequest(patient_name="DOE*"))
    if kind == "get_series_1000":
        return Call(kind, "GetSeries", pb.GetSeriesRequest(series_instance_uid=probe_uid))
    if kind == "get_attributes":
        uid = rng.choice(grown.series)
        return Call(
            kind,
            "GetAttributes",
            pb.GetAttributesRequest(series_instance_uid=uid, attributes=ATTRIBUTES),
        )
    if kind == "list_studies_first":
        return Call(kind, "ListStudies", pb.ListStudiesRequest(page_size=100))
    if kind == "qido_name_prefix":
        return Call(kind, "qido", {"PatientName": "DOE*", "limit": "101"})
    if kind == "qido_fuzzy":
        words = f"{_fold(patient.family)[:3]} {_fold(patient.given)[:3]}"
        return Call(kind, "qido", {"PatientName": words, "fuzzymatching": "true", "limit": "101"})
    raise AssertionError(kind)


KINDS = (
    "list_series_first", "list_series_mod_date", "list_series_patient_id",
    "list_series_patient_name", "list_series_name_prefix", "get_series_1000",
    "get_attributes", "list_studies_first", "qido_name_prefix", "qido_fuzzy",
)  # fmt: skip


def _rows(response: Any) -> int:
    for name in ("series", "studies", "instances", "attributes"):
        if hasattr(response, name) and not isinstance(getattr(response, name), pb.Series):
            return len(getattr(response, name))
    return 0


class Caller:
    def __init__(self, store: Store) -> None:
        self.channel = grpc.insecure_channel(store.address)
        self.stub = pb_grpc.SeriesStoreStub(self.channel)
        self.http = Http(store.http_port)

    def __call__(self, call: Call) -> tuple[float, int]:
        if call.rpc == "qido":
            path = "/studies?" + urllib.parse.urlencode(call.request, quote_via=urllib.parse.quote)
            elapsed, status, body = self.http.get(path)
            if status not in (200, 204):
                raise SystemExit(f"GET {path}: {status} {body[:300]!r}")
            return elapsed, len(json.loads(body)) if status == 200 else 0
        method: Callable[..., Any] = getattr(self.stub, call.rpc)
        start = time.perf_counter()
        response = method(call.request, timeout=120)
        elapsed = time.perf_counter() - start
        if call.rpc == "GetSeries":
            return elapsed, len(response.instances)
        return elapsed, _rows(response)

    def close(self) -> None:
        self.channel.close()
        self.http.conn.close()


def measure(
    store: Store, grown: Grown, probe_uid: str, samples: int, warmup: int, seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, Call]]:
    """p50/p99 per kind; and one call of each kind (for EXPLAIN)."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    rows: dict[str, list[int]] = {k: [] for k in KINDS}
    caller = Caller(store)
    try:
        for i in range(samples + warmup):
            kinds = list(KINDS)
            rng.shuffle(kinds)
            for kind in kinds:
                elapsed, found = caller(make_call(kind, grown, probe_uid, rng))
                if i >= warmup:
                    times[kind].append(elapsed)
                    rows[kind].append(found)
    finally:
        caller.close()
    out = {
        kind: {
            "p50_ms": round(_quantile(times[kind], 0.5) * 1000, 2),
            "p99_ms": round(_quantile(times[kind], 0.99) * 1000, 2),
            "rows_mean": round(statistics.fmean(rows[kind]), 1),
        }
        for kind in KINDS
    }
    examples = {k: make_call(k, grown, probe_uid, random.Random(seed + 99)) for k in KINDS}
    return out, examples


# --- EXPLAIN: the statements the store's own code runs ---------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []


def _recording(recorder: _Recorder, base: type) -> type:
    class Recording(base):  # type: ignore[misc, valid-type]
        async def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            recorder.statements.append((str(query), params))
            return await super().execute(query, params, **kw)

    return Recording


async def _store_statements(url: str, call: Call) -> list[tuple[str, Any]]:
    """The SQL (and parameters) the store runs for `call`, captured by running the store's
    query functions in this process on a real connection that records each execute."""
    if call.rpc == "qido":
        keys = [(k, v) for k, v in call.request.items() if k not in ("limit", "fuzzymatching")]
        compiled = matching.compile_query(
            matching.Level.STUDY, keys, fuzzy=call.request.get("fuzzymatching") == "true"
        )
        params = dict(compiled.params, rows=min(find.PAGE_ROWS, int(call.request["limit"])))
        return [(find._page_sql(compiled, after=False, offset=False), params)]
    recorder = _Recorder()
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        conn.cursor_factory = _recording(recorder, psycopg.AsyncCursor)
        conn.server_cursor_factory = _recording(recorder, psycopg.AsyncServerCursor)
        await conn.execute("SET TIME ZONE 'UTC'")
        recorder.statements.clear()
        functions = {
            "ListSeries": queries.list_series,
            "ListStudies": queries.list_studies,
            "GetSeries": queries.get_series,
            "GetAttributes": get_attributes,
        }
        async with conn.transaction():
            await functions[call.rpc](conn, call.request)
    finally:
        await conn.close()
    return recorder.statements


def _walk(node: dict[str, Any], out: list[dict[str, Any]]) -> None:
    out.append(node)
    for child in node.get("Plans", []):
        _walk(child, out)


def _node_text(node: dict[str, Any]) -> str:
    text = node["Node Type"]
    if node.get("Relation Name"):
        text += f" on {node['Relation Name']}"
    if node.get("Index Name"):
        text += f" using {node['Index Name']}"
    # Rows produced, over all loops: where a plan's work goes.
    return text + f" [{round(node.get('Actual Rows', 0) * node.get('Actual Loops', 1)):,}]"


def explain(url: str, call: Call, big: int, text: bool) -> dict[str, Any]:
    statements = asyncio.run(_store_statements(url, call))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        sizes = dict(
            conn.execute(  # type: ignore[arg-type]
                "SELECT relname, reltuples::bigint FROM pg_class WHERE relkind = 'r'"
                " AND relnamespace = 'public'::regnamespace"
            ).fetchall()
        )
        plans, flags, texts = [], [], []
        exec_ms = 0.0
        hit = read = 0
        for sql, params in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()
            assert row is not None
            result = row[0][0]
            nodes: list[dict[str, Any]] = []
            _walk(result["Plan"], nodes)
            exec_ms += result["Execution Time"]
            hit += result["Plan"].get("Shared Hit Blocks", 0)
            read += result["Plan"].get("Shared Read Blocks", 0)
            plans.append(" > ".join(_node_text(n) for n in nodes))
            if text:
                lines = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
                texts.append("\n".join(line[0] for line in lines))
            for n in nodes:
                rel = n.get("Relation Name", "")
                if n["Node Type"] == "Seq Scan" and sizes.get(rel, 0) >= big:
                    flags.append(f"Seq Scan on {rel} ({sizes[rel]:,} rows)")
                rows = n.get("Actual Rows", 0) * n.get("Actual Loops", 1)
                if n["Node Type"] in ("Sort", "Incremental Sort") and rows >= big:
                    flags.append(f"Sort of {rows:,} rows ({n.get('Sort Method', '')})")
    return {
        "statements": len(plans),
        "plan": " || ".join(plans),
        "exec_ms": round(exec_ms, 3),
        "shared_hit": hit,
        "shared_read": read,
        "flags": flags,
        **({"text": texts} if text else {}),
    }


# --- The run ------------------------------------------------------------------------------


def checkpoint_figures(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        vacuum = time.perf_counter() - start
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM series),"
            " (SELECT count(*) FROM studies), (SELECT count(*) FROM patients),"
            " pg_database_size(current_database())"
        ).fetchone()
        assert counts is not None
        tables = conn.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relkind = 'r'"
            " AND relnamespace = 'public'::regnamespace ORDER BY 2 DESC LIMIT 6"
        ).fetchall()
    instances, series, studies, patients, db_bytes = counts
    return {
        "instances": instances,
        "series": series,
        "studies": studies,
        "patients": patients,
        "vacuum_analyze_s": round(vacuum, 2),
        "database_mb": round(db_bytes / 2**20, 1),
        "database_mb_per_million": round(db_bytes / 2**20 / (instances / 1e6), 1)
        if instances
        else None,
        "tables_mb": {name: round(size / 2**20, 1) for name, size in tables},
    }


def print_table(checkpoints: list[dict[str, Any]]) -> None:
    heads = [f"{c['instances']:,}" for c in checkpoints]
    width = max(16, *(len(h) + 2 for h in heads))
    print(f"{'instances':<26}" + "".join(f"{h:>{width}}" for h in heads))

    def line(label: str, cells: list[Any]) -> None:
        print(f"{label:<26}" + "".join(f"{'-' if c is None else c:>{width}}" for c in cells))

    line(
        "series / studies / pat.",
        [f"{c['series']}/{c['studies']}/{c['patients']}" for c in checkpoints],
    )
    line("ingest step /s", [c.get("ingest_step_per_s") for c in checkpoints])
    line("ingest last chunk /s", [c.get("ingest_last_chunk_per_s") for c in checkpoints])
    line("database MB", [c["database_mb"] for c in checkpoints])
    line("MB per million inst.", [c["database_mb_per_million"] for c in checkpoints])
    print(f"{'p50 / p99 ms':<26}")
    for kind in KINDS:
        line(
            f"  {kind}",
            [
                f"{c['queries'][kind]['p50_ms']} / {c['queries'][kind]['p99_ms']}"
                for c in checkpoints
            ],
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, default=parse_sizes("0,1M,5M,10M"),
        help="checkpoints, in instances (0,1M,5M,10M)",
    )  # fmt: skip
    parser.add_argument("--per-series", type=float, default=100, help="mean instances/series")
    parser.add_argument("--samples", type=int, default=200, help="timed calls per kind")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per kind first")
    parser.add_argument("--streams", type=int, default=2, help="StoreSeries streams loading")
    parser.add_argument("--chunk", type=int, default=200_000, help="instances per timed chunk")
    parser.add_argument("--big-table", type=int, default=10_000, help="rows that make a table big")
    parser.add_argument("--explain-all", action="store_true", help="EXPLAIN at every checkpoint")
    parser.add_argument(
        "--explain-text", action="store_true", help="print the full EXPLAIN of every kind too"
    )
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--database-url", help="PostgreSQL server to use (default: embedded)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sf-scale-bench-"))
    checkpoints: list[dict[str, Any]] = []
    plans: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        with bench_database(args.database_url, workdir) as (url, _):
            migrations.upgrade(url)
            catalog = Catalog(str(int(time.time())), args.per_series, args.seed)
            probe, probe_uid = catalog.probe()
            store = Store(url, str(workdir))
            try:
                load_chunk(store.address, [[probe]])
                for index, size in enumerate(args.sizes):
                    step = grow(store.address, catalog, size, args.chunk, args.streams)
                    figures = checkpoint_figures(url)
                    if figures["instances"] != catalog.grown.instances:
                        raise SystemExit(
                            f"the catalog holds {figures['instances']} instances,"
                            f" {catalog.grown.instances} were sent"
                        )
                    if step.instances:
                        figures["ingest_step_per_s"] = round(step.instances / step.seconds)
                        figures["ingest_last_chunk_per_s"] = round(step.last_chunk_rate)
                        figures["ingest_step_seconds"] = round(step.seconds, 2)
                    figures["queries"], examples = measure(
                        store, catalog.grown, probe_uid, args.samples, args.warmup, args.seed
                    )
                    if args.explain_all or index == len(args.sizes) - 1:
                        plans = {
                            k: explain(url, examples[k], args.big_table, args.explain_text)
                            for k in KINDS
                        }
                        figures["explain"] = plans
                    checkpoints.append(figures)
                    print(
                        f"checkpoint {figures['instances']:,} instances: "
                        f"{figures['database_mb']} MB, step ingest "
                        f"{figures.get('ingest_step_per_s', '-')}/s",
                        flush=True,
                    )
            finally:
                store.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    first = next((c for c in checkpoints if c.get("ingest_step_per_s")), None)
    last = checkpoints[-1]
    worst = max(last["queries"].values(), key=lambda q: q["p99_ms"])
    targets = {
        "ingest_last_vs_first_step": round(
            last.get("ingest_last_chunk_per_s", 0) / first["ingest_step_per_s"], 3
        )
        if first and last.get("ingest_last_chunk_per_s")
        else None,
        "ingest_within_20pct": None,
        "worst_p99_ms": worst["p99_ms"],
        "every_p99_le_50ms": all(q["p99_ms"] <= 50 for q in last["queries"].values()),
    }
    if targets["ingest_last_vs_first_step"] is not None:
        targets["ingest_within_20pct"] = targets["ingest_last_vs_first_step"] >= 0.8
    print()
    print_table(checkpoints)
    print(
        f"(ingest: StoreSeries on {args.streams} streams, instances of the step / seconds"
        f" streaming it; last chunk: the step's last {args.chunk:,}; p50/p99 over"
        f" {args.samples} calls per kind)"
    )
    if plans:
        print(f"\nEXPLAIN (ANALYZE, BUFFERS) at {last['instances']:,} instances:")
        for kind, plan in plans.items():
            flag = ("  !! " + "; ".join(plan["flags"])) if plan["flags"] else ""
            print(f"  {kind}: {plan['exec_ms']} ms, buffers hit {plan['shared_hit']}"
                  f" read {plan['shared_read']}{flag}")  # fmt: skip
            print(f"      {plan['plan']}")
            for text in plan.get("text", []):
                print("        " + text.replace("\n", "\n        "))
    print(f"\ntargets at {last['instances']:,}: {targets}")
    result = {
        "sizes": args.sizes,
        "per_series": args.per_series,
        "streams": args.streams,
        "samples": args.samples,
        "seconds": round(time.perf_counter() - started, 1),
        "checkpoints": checkpoints,
        "targets": targets,
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
