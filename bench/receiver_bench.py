"""Receiver throughput, latency and memory against dcmtk storescp and Orthanc, same corpus.

dcmtk `storescu` (Debian) sends one corpus to three receivers in the same run:
  - dcmtk `storescp` writing files (the speed reference),
  - seriesflow: receiver -> spool -> StoreSeries -> store -> PostgreSQL,
  - Orthanc (storage on disk) as a PACS.
For small (64x64) and CT-size (512x512x16 bit) instances, with 1 and 4 parallel senders,
with TCP_NODELAY=1 and with Debian's default (Nagle on). Prints instances/s, MB/s, ratios,
the p50/p99 latency from a series' last instance to its commit in PostgreSQL, and the
receiver's resident memory after 1,000 and after 10,000 instances. The last line of output
is one JSON object with every figure.

    .venv/bin/python bench/receiver_bench.py            # full run (a few minutes)
    .venv/bin/python bench/receiver_bench.py --quick    # CI smoke run (well under a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seriesflow.store.embedded_postgres import EmbeddedPostgres  # noqa: E402

SERIES_SIZE = 50
_STORE = (
    "import sys\nfrom seriesflow.cli import main\nsys.exit(main(['migrate']) or main(['store']))\n"
)
_RECEIVER = "import sys\nfrom seriesflow.cli import main\nsys.exit(main(['receiver']))\n"


def log(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- corpus ------------------------------------------------------------------------------


def make_corpus(folder: Path, count: int, size: int, parts: int = 4) -> int:
    """`count` CT images of size x size x 16 bit in series of SERIES_SIZE, spread over
    `parts` sub-folders (one per parallel sender). Returns the total bytes of the files."""
    total = 0
    pixels = bytes(range(256)) * (size * size * 2 // 256)
    study = generate_uid()
    for index in range(count):
        if index % SERIES_SIZE == 0:
            series = generate_uid()
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^Patient", "BENCH-1", "CT"
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20240101", 1, index + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        part = folder / f"part{(index // SERIES_SIZE) % parts}"
        part.mkdir(parents=True, exist_ok=True)
        path = part / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def send(port: int, folder: Path, senders: int, nodelay: bool, aet: str = "BENCHSCU") -> float:
    """storescu from `senders` processes at once (one association each); wall seconds."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    parts = sorted(folder.iterdir())
    groups = [parts[i::senders] for i in range(senders)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", aet, "-aec", "STORESCP", "+sd", "+r", "127.0.0.1", str(port)]
            + [str(p) for p in group],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for group in groups
        if group
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


# -- the three receivers -------------------------------------------------------------------


class Dcmtk:
    name = "dcmtk_storescp"

    def __init__(self, work: Path) -> None:
        self.work = work

    def run(self, folder: Path, senders: int, nodelay: bool, count: int) -> float:
        out = self.work / "storescp-out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        port = free_port()
        env = dict(os.environ, TCP_NODELAY="1" if nodelay else "0")
        proc = subprocess.Popen(
            ["storescp", "-aet", "STORESCP", "-od", str(out), "--fork", str(port)]
            if senders > 1
            else ["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port)
            seconds = send(port, folder, senders, nodelay)
        finally:
            stop(proc)
        stored = sum(1 for _ in out.rglob("*") if _.is_file())
        if stored != count:
            raise RuntimeError(f"storescp stored {stored} of {count}")
        return seconds


class OrthancTarget:
    name = "orthanc"

    def __init__(self, work: Path) -> None:
        self.work = work

    def run(self, folder: Path, senders: int, nodelay: bool, count: int) -> float:
        home = self.work / "orthanc"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        http, dicom = free_port(), free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": str(home / "storage"),
            "IndexDirectory": str(home / "index"),
            "HttpPort": http,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomPort": dicom,
            "DicomAet": "STORESCP",
            # Orthanc 1.10 cannot bind DICOM to loopback only: accept stores only from the
            # benchmark's own AE title at 127.0.0.1, for the seconds this instance lives.
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"bench": ["BENCHSCU", "127.0.0.1", 1]},
            "Plugins": [],
        }
        (home / "orthanc.json").write_text(json.dumps(config))
        env = dict(os.environ, TCP_NODELAY="1" if nodelay else "0")
        proc = subprocess.Popen(
            ["Orthanc", str(home / "orthanc.json")],
            cwd=home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(dicom)
            seconds = send(dicom, folder, senders, nodelay)
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=10) as r:
                stored = json.loads(r.read())["CountInstances"]
        finally:
            stop(proc)
        if stored != count:
            raise RuntimeError(f"Orthanc stored {stored} of {count}")
        return seconds


class Seriesflow:
    name = "seriesflow"

    def __init__(self, work: Path, database_url: str) -> None:
        self.work = work
        self.database_url = database_url
        self.grpc_port = free_port()
        env = dict(
            os.environ,
            SERIESFLOW_DATABASE_URL=database_url,
            SERIESFLOW_DATA_DIR=str(work / "store"),
            SERIESFLOW_GRPC_PORT=str(self.grpc_port),
            SERIESFLOW_STORE_METRICS_PORT="0",
            SERIESFLOW_STORE_HTTP_PORT="0",
            SERIESFLOW_LOG_LEVEL="WARNING",
        )
        self.store = subprocess.Popen(
            [sys.executable, "-c", _STORE],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "store.log", "wb"),  # noqa: SIM115 (lives with the process)
        )
        wait_port(self.grpc_port, timeout=60)
        self.receiver: subprocess.Popen[bytes] | None = None
        self.dicom_port = 0
        self.delivery_seconds = 0.0

    def start_receiver(self, name: str) -> None:
        if self.receiver is not None:
            stop(self.receiver)
        self.dicom_port = free_port()
        env = dict(
            os.environ,
            SERIESFLOW_DATA_DIR=str(self.work / name),
            SERIESFLOW_DICOM_PORT=str(self.dicom_port),
            SERIESFLOW_RECEIVER_METRICS_PORT=str(free_port()),
            SERIESFLOW_STORE_ADDRESS=f"127.0.0.1:{self.grpc_port}",
            SERIESFLOW_SERIES_RELEASED_GRACE="0.5",
            SERIESFLOW_LOG_LEVEL="WARNING",
        )
        self.receiver = subprocess.Popen(
            [sys.executable, "-c", _RECEIVER],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / f"{name}.log", "wb"),  # noqa: SIM115
        )
        wait_port(self.dicom_port)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query)
            return list(cursor.fetchall()) if cursor.description else []

    def run(self, folder: Path, senders: int, nodelay: bool, count: int) -> float:
        self.sql("TRUNCATE instances, series, studies, patients CASCADE")
        start = time.perf_counter()
        seconds = send(self.dicom_port, folder, senders, nodelay)
        deadline = time.monotonic() + 120
        while self.sql("SELECT count(*) FROM instances")[0][0] < count:
            if time.monotonic() > deadline:
                raise RuntimeError("seriesflow did not deliver every instance in 120 s")
            time.sleep(0.05)
        # Until the last row is in PostgreSQL; includes the 0.5 s released grace.
        self.delivery_seconds = time.perf_counter() - start
        return seconds

    def latencies(self) -> list[float]:
        """Seconds from each completed series' last instance to its commit in PostgreSQL."""
        deadline = time.monotonic() + 60
        while self.sql("SELECT count(*) FROM series WHERE status <> 'COMPLETE'")[0][0]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        rows = self.sql(
            "SELECT extract(epoch FROM completed_at - last_received_at) FROM series "
            "WHERE completed_at IS NOT NULL"
        )
        return [float(r[0]) for r in rows]

    def rss_mib(self) -> float:
        assert self.receiver is not None
        for line in Path(f"/proc/{self.receiver.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        if self.receiver is not None:
            stop(self.receiver)
        stop(self.store)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


_PRIVATE_NETWORK = "SERIESFLOW_BENCH_PRIVATE_NETWORK"


def run_in_private_network(argv: list[str]) -> int:
    """Run this bench again inside a network namespace that has only a loopback interface.

    dcmtk's storescp and Debian's Orthanc 1.10 cannot bind their DICOM port to loopback
    only; inside the namespace nothing the bench starts is reachable from outside.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        print("unshare and ip are needed (util-linux, iproute2): run `make tools`", file=sys.stderr)
        return 2
    command = [unshare, "--net"]
    if os.geteuid() != 0:
        command.append("--map-root-user")
    command += ["--", "sh", "-c", f'"{ip}" link set lo up && exec "$@"', "sh"]
    command += [sys.executable, str(Path(__file__).resolve()), *argv]
    return subprocess.call(command, env={**os.environ, _PRIVATE_NETWORK: "1"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpus: a CI smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if os.environ.get(_PRIVATE_NETWORK) != "1":
        return run_in_private_network(sys.argv[1:] if argv is None else argv)
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; run `make tools`", file=sys.stderr)
            return 2
    counts = {"small": 200, "ct": 40} if args.quick else {"small": 2000, "ct": 200}
    nagle_count = 40 if args.quick else 200
    memory_counts = (200, 2000) if args.quick else (1000, 10000)
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-"))
    embedded = None
    seriesflow: Seriesflow | None = None
    try:
        log(f"work folder {work}; making the corpus")
        corpora = {
            "small": (work / "small", make_corpus(work / "small", counts["small"], 64)),
            "ct": (work / "ct", make_corpus(work / "ct", counts["ct"], 512)),
            "nagle": (work / "nagle", make_corpus(work / "nagle", nagle_count, 64)),
        }
        url = os.environ.get("SERIESFLOW_DATABASE_URL")
        if not url:
            embedded = EmbeddedPostgres(work / "pg")
            url = embedded.url
        db = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        bench_url = psycopg.conninfo.make_conninfo(url, dbname=db)
        seriesflow = Seriesflow(work, bench_url)
        seriesflow.start_receiver("rx-throughput")
        targets: list[Any] = [Dcmtk(work), seriesflow, OrthancTarget(work)]
        results: dict[str, Any] = {"quick": args.quick, "counts": counts, "runs": {}}
        latencies: list[float] = []

        def measure(kind: str, senders: int, nodelay: bool, count: int) -> None:
            folder, nbytes = corpora[kind]
            key = f"{kind}_{senders}x_{'nodelay' if nodelay else 'nagle'}"
            row: dict[str, Any] = {}
            for target in targets:
                seconds = target.run(folder, senders, nodelay, count)
                row[target.name] = {
                    "instances_per_s": round(count / seconds, 1),
                    "mb_per_s": round(nbytes / seconds / 1e6, 2),
                }
                if target is seriesflow:
                    row[target.name]["delivered_per_s"] = round(
                        count / seriesflow.delivery_seconds, 1
                    )
                    latencies.extend(seriesflow.latencies())
            sf = row["seriesflow"]["instances_per_s"]
            row["ratio_vs_dcmtk"] = round(sf / row["dcmtk_storescp"]["instances_per_s"], 3)
            row["ratio_vs_orthanc"] = round(sf / row["orthanc"]["instances_per_s"], 3)
            results["runs"][key] = row
            log(
                f"{key:24s} "
                + "  ".join(
                    f"{n}={v['instances_per_s']}/s {v['mb_per_s']}MB/s"
                    for n, v in row.items()
                    if isinstance(v, dict)
                )
                + f"  ratio dcmtk={row['ratio_vs_dcmtk']} orthanc={row['ratio_vs_orthanc']}"
            )

        for kind in ("small", "ct"):
            for senders in (1, 4):
                measure(kind, senders, True, counts[kind])
        measure("nagle", 1, False, nagle_count)
        measure("nagle", 1, True, nagle_count)
        nagle = results["runs"]["nagle_1x_nagle"]["seriesflow"]["instances_per_s"]
        nodelay = results["runs"]["nagle_1x_nodelay"]["seriesflow"]["instances_per_s"]
        results["seriesflow_nagle_slowdown"] = round(nodelay / nagle, 2)
        results["latency_last_instance_to_commit_s"] = {
            "p50": round(percentile(latencies, 0.5), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "series": len(latencies),
        }

        log("memory: a fresh receiver, small instances")
        memory = work / "memory"
        make_corpus(memory / "first", memory_counts[0], 64)
        make_corpus(memory / "rest", memory_counts[1] - memory_counts[0], 64)
        seriesflow.start_receiver("rx-memory")
        seriesflow.run(memory / "first", 1, True, memory_counts[0])
        rss_first = seriesflow.rss_mib()
        send(seriesflow.dicom_port, memory / "rest", 1, True)
        deadline = time.monotonic() + 120
        while seriesflow.sql("SELECT count(*) FROM instances")[0][0] < memory_counts[1]:
            if time.monotonic() > deadline:
                raise RuntimeError("memory run not delivered")
            time.sleep(0.2)
        rss_last = seriesflow.rss_mib()
        results["receiver_rss_mib"] = {
            str(memory_counts[0]): round(rss_first, 1),
            str(memory_counts[1]): round(rss_last, 1),
            "growth": round(rss_last / rss_first - 1, 3),
        }
        log(f"latency {results['latency_last_instance_to_commit_s']}")
        log(f"rss {results['receiver_rss_mib']}")
        log(f"nagle slowdown {results['seriesflow_nagle_slowdown']}")
        print(json.dumps(results, sort_keys=True), flush=True)
        return 0
    finally:
        if seriesflow is not None:
            seriesflow.close()
        if embedded is not None:
            embedded.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
