"""Receiver memory with big instances: peak RSS growth while they stream in.

The receiver runs as a real process (`seriesflow receiver`); senders are separate
processes using pynetdicom, which sends a file in PDU-sized chunks
(STORE_SEND_CHUNKED_DATASET), so the senders' memory stays out of the picture. The
instances are synthetic multi-frame CT images generated into a temporary folder just
before they are sent and deleted right after. Two scenarios:

  - one instance of 1 GiB on one association (target: growth under 64 MiB),
  - 8 instances of 200 MiB at once, one association each (target: under 256 MiB).

Growth is the receiver's peak resident memory during the scenario (VmHWM, reset before
each through /proc/PID/clear_refs, and VmRSS polled every 20 ms as a cross-check) minus
its resident memory just before (after a small warm-up instance). No store is started:
an instance's bytes end at the receiver; only its small record would travel on.
Prints figures, then one JSON line; exits 1 if a full run misses a target.

    .venv/bin/python bench/memory_bench.py            # full run (about a minute)
    .venv/bin/python bench/memory_bench.py --quick    # CI smoke run: 128 MiB and 4 x 32 MiB
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
_FRAME = 1024 * 1024 * 2  # 1024 x 1024 x 16 bit
_RECEIVER = "import sys\nfrom seriesflow.cli import main\nsys.exit(main(['receiver']))\n"
_SENDER = """
import sys
from pynetdicom import AE, _config
_config.STORE_SEND_CHUNKED_DATASET = True
port, path = int(sys.argv[1]), sys.argv[2]
ae = AE(ae_title="MEMBENCH")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
if not assoc.is_established:
    sys.exit("association refused")
status = assoc.send_c_store(path)
assoc.release()
sys.exit(0 if status and status.Status == 0 else f"status {status}")
"""


def log(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_instance(path: Path, frames: int, study: str, series: str, number: int) -> int:
    """A multi-frame CT of `frames` 2 MiB frames, written in chunks: never whole in memory."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Bench^Memory", "BENCH-MEM", "CT"
    ds.SeriesNumber, ds.InstanceNumber, ds.NumberOfFrames = 1, number, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(path, ds, enforce_file_format=True)
    frame = os.urandom(_FRAME)
    with open(path, "ab") as out:
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, reserved, 32-bit length.
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * _FRAME))
        for _ in range(frames):
            out.write(frame)
    return path.stat().st_size


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Receiver:
    def __init__(self, work: Path) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        env = dict(os.environ)
        env.update(
            SERIESFLOW_DATA_DIR=str(work / "receiver"),
            SERIESFLOW_LISTEN_HOST="127.0.0.1",
            SERIESFLOW_DICOM_PORT=str(self.port),
            SERIESFLOW_RECEIVER_METRICS_PORT=str(self.metrics_port),
            SERIESFLOW_STORE_ADDRESS=f"127.0.0.1:{free_port()}",  # nothing listens: no store
            SERIESFLOW_STOW_PORT="off",
            SERIESFLOW_LOG_LEVEL="WARNING",
            SERIESFLOW_NETWORK_TIMEOUT="600",
        )
        self.log_path = work / "receiver.log"
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _RECEIVER], cwd=REPO, env=env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError("receiver did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def send(port: int, paths: list[Path]) -> float:
    """One sender process per file, all at once; wall seconds."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SENDER, str(port), str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for path in paths
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"sender failed: {err.decode()[-800:]}")
    return time.perf_counter() - start


def scenario(receiver: Receiver, folder: Path, count: int, frames: int) -> dict[str, Any]:
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    paths = [folder / f"{n}.dcm" for n in range(count)]
    total = sum(write_instance(p, frames, study, series, n + 1) for n, p in enumerate(paths))
    pid = receiver.process.pid
    baseline = status_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    peak_polled = baseline
    done = threading.Event()

    def poll() -> None:
        nonlocal peak_polled
        while not done.wait(0.02):
            peak_polled = max(peak_polled, status_kib(pid, "VmRSS"))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        seconds = send(receiver.port, paths)
    finally:
        done.set()
        poller.join()
        shutil.rmtree(folder)
    peak = max(status_kib(pid, "VmHWM"), peak_polled)
    return {
        "instances": count,
        "instance_mib": round(frames * _FRAME / MIB),
        "total_mib": round(total / MIB),
        "seconds": round(seconds, 2),
        "mb_per_s": round(total / 1e6 / seconds, 1),
        "baseline_rss_mib": round(baseline / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "growth_mib": round((peak - baseline) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller instances: a CI smoke run")
    args = parser.parse_args(argv)
    # (name, instances, frames of 2 MiB, target growth in MiB)
    plans = (
        [("one_instance", 1, 64, 64), ("concurrent", 4, 16, 256)]
        if args.quick
        else [("one_instance", 1, 512, 64), ("concurrent", 8, 100, 256)]
    )
    results: dict[str, Any] = {"benchmark": "receiver_memory", "quick": args.quick}
    work = Path(tempfile.mkdtemp(prefix="seriesflow-membench-"))
    receiver = Receiver(work)
    missed = []
    try:
        scenario(receiver, work / "warmup", 1, 1)  # imports and first-use allocations
        for name, count, frames, target in plans:
            figures = scenario(receiver, work / name, count, frames)
            figures["target_growth_mib"] = target
            figures["within_target"] = figures["growth_mib"] < target
            results[name] = figures
            log(
                f"{name}: {count} x {figures['instance_mib']} MiB in {figures['seconds']} s "
                f"({figures['mb_per_s']} MB/s); receiver RSS {figures['baseline_rss_mib']} -> "
                f"peak {figures['peak_rss_mib']} MiB: growth {figures['growth_mib']} MiB "
                f"(target < {target} MiB{'' if figures['within_target'] else ': MISSED'})"
            )
            if not figures["within_target"]:
                missed.append(name)
        leftovers = list((work / "receiver" / "spool" / "incoming").glob("*"))
        results["incoming_files_left"] = len(leftovers)
    finally:
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results), flush=True)
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
