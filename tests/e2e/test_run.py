"""`seriesflow run` end to end: the one command a newcomer runs, driven like a user would.

Real processes (the all-in-one supervisor, its store and receiver children, the embedded
PostgreSQL), real DICOM from dcmtk's storescu and echoscu, real queries with grpcurl.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, require_tool
from dicom_files import WrittenSeries, write_study

ROOT = Path(__file__).resolve().parents[2]
IDLE_TIMEOUT = 1.0


@dataclass
class RunningService:
    process: subprocess.Popen[str]
    data_dir: Path
    dicom_port: int
    grpc_port: int
    output: list[str]

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


def _environment(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "SERIESFLOW_DATA_DIR": str(data_dir),
            "SERIESFLOW_LISTEN_HOST": "127.0.0.1",
            "SERIESFLOW_DICOM_PORT": str(ports["dicom"]),
            "SERIESFLOW_GRPC_PORT": str(ports["grpc"]),
            "SERIESFLOW_STORE_METRICS_PORT": str(ports["store_metrics"]),
            "SERIESFLOW_STORE_HTTP_PORT": str(ports["store_http"]),
            "SERIESFLOW_STOW_PORT": str(ports["stow"]),
            "SERIESFLOW_RECEIVER_METRICS_PORT": str(ports["receiver_metrics"]),
            "SERIESFLOW_SERIES_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        }
    )
    return env


def start_service(data_dir: Path, ports: dict[str, int]) -> RunningService:
    process = subprocess.Popen(
        [sys.executable, "-m", "seriesflow", "run"],
        env=_environment(data_dir, ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if "seriesflow is running" in lines.get(timeout=1):
                return RunningService(process, data_dir, ports["dicom"], ports["grpc"], output)
        except queue.Empty:
            if process.poll() is not None:
                break
    process.kill()
    pytest.fail("seriesflow run did not become ready in 60 s:\n" + "".join(output))


def stop_service(service: RunningService, signum: int) -> int:
    children = service.children()
    service.process.send_signal(signum)
    code = service.process.wait(timeout=60)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"child {pid} outlived run"
    assert not (service.data_dir / "postgres" / "postmaster.pid").exists(), (
        "embedded PostgreSQL still running after run exited"
    )
    return code


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def ports() -> dict[str, int]:
    names = ("dicom", "grpc", "store_metrics", "store_http", "receiver_metrics", "stow")
    return {name: free_port() for name in names}


def list_series(grpcurl: str, address: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            '{"page_size": 100}',
            address,
            "seriesflow.v1.SeriesStore/ListSeries",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(result.stdout).get("series", []))


def wait_for_series(
    grpcurl: str, address: str, expected: dict[str, int], timeout: float = 60
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    series: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        series = list_series(grpcurl, address)
        counts = {s["seriesInstanceUid"]: int(str(s.get("numInstances", 0))) for s in series}
        complete = all(s.get("status") == "SERIES_STATUS_COMPLETE" for s in series)
        if counts == expected and complete:
            return series
        time.sleep(0.5)
    pytest.fail(f"series never matched {expected}; last answer: {series}")


def expected_counts(written: list[WrittenSeries]) -> dict[str, int]:
    return {s.series_instance_uid: len(s.sop_instance_uids) for s in written}


def test_run_receives_a_folder_from_storescu_and_keeps_it_across_restarts(
    tmp_path: Path, pg_tmp_path: Path, ports: dict[str, int]
) -> None:
    storescu = require_tool("storescu")
    echoscu = require_tool("echoscu")
    grpcurl = require_tool("grpcurl")
    written = write_study(tmp_path / "dicom", [5, 3, 2])
    data_dir = pg_tmp_path / "data"

    service = start_service(data_dir, ports)
    try:
        echo = subprocess.run(
            [echoscu, "-aec", "STORESCP", "127.0.0.1", str(ports["dicom"])],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        sent = subprocess.run(
            [
                storescu,
                "-aec",
                "STORESCP",
                "+sd",
                "+r",
                "127.0.0.1",
                str(ports["dicom"]),
                str(tmp_path / "dicom"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        assert sent.returncode == 0, sent.stderr
        series = wait_for_series(grpcurl, service.grpc_address, expected_counts(written))
        assert {s["studyInstanceUid"] for s in series} == {written[0].study_instance_uid}
    finally:
        code = stop_service(service, signal.SIGINT)
    assert code == 0, "".join(service.output)

    again = start_service(data_dir, ports)
    try:
        assert {
            s["seriesInstanceUid"]: int(str(s["numInstances"]))
            for s in list_series(grpcurl, again.grpc_address)
        } == expected_counts(written)
    finally:
        code = stop_service(again, signal.SIGTERM)
    assert code == 0, "".join(again.output)


def test_run_refuses_a_bad_setting_naming_the_variable(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    env = _environment(tmp_path, ports) | {"SERIESFLOW_SERIES_IDLE_TIMEOUT": "soon"}
    result = subprocess.run(
        [sys.executable, "-m", "seriesflow", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "SERIESFLOW_SERIES_IDLE_TIMEOUT='soon'" in result.stderr


def test_run_exits_nonzero_when_the_dicom_port_is_taken(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["dicom"]))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "seriesflow", "run"],
            env=_environment(tmp_path, ports),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert "receiver" in result.stderr
