"""`seriesflow run` with token files: its store requires tokens and its receiver sends the
write token by itself (no SERIESFLOW_STORE_TOKEN_FILE given); readers need the read token."""

# ruff: noqa: F811  (the ports fixture is imported from test_run: pytest finds it by name)

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import test_run
from conftest import require_tool
from dicom_files import write_study
from test_run import expected_counts, ports, start_service, stop_service  # noqa: F401

READ_TOKEN = "r-run-6d5c4b3a291807f6e5d4c3b2a1"


def test_run_with_token_files_delivers_with_its_write_token_and_reads_need_the_read_token(
    tmp_path: Path, pg_tmp_path: Path, ports: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    storescu, grpcurl = require_tool("storescu"), require_tool("grpcurl")
    (tmp_path / "write-tokens").write_text("w-run-0f1e2d3c4b5a69788796a5b4c3\n")
    (tmp_path / "read-tokens").write_text(f"{READ_TOKEN}\n")
    environment = test_run._environment
    monkeypatch.setattr(
        test_run,
        "_environment",
        lambda data_dir, ports: {
            **environment(data_dir, ports),
            "SERIESFLOW_GRPC_WRITE_TOKENS_FILE": str(tmp_path / "write-tokens"),
            "SERIESFLOW_GRPC_READ_TOKENS_FILE": str(tmp_path / "read-tokens"),
        },
    )
    written = write_study(tmp_path / "dicom", [3, 2])
    service = start_service(pg_tmp_path / "data", ports)
    address = service.grpc_address

    def grpcurl_list(*headers: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                grpcurl,
                "-plaintext",
                *headers,
                "-d",
                '{"page_size": 100}',
                address,
                "seriesflow.v1.SeriesStore/ListSeries",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )

    try:
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
        refused = grpcurl_list()
        assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
        deadline, counts = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            answered = grpcurl_list("-H", f"authorization: Bearer {READ_TOKEN}")
            assert answered.returncode == 0, answered.stderr
            series = json.loads(answered.stdout).get("series", [])
            counts = {s["seriesInstanceUid"]: int(s["numInstances"]) for s in series}
            if counts == expected_counts(written):
                break
            time.sleep(0.5)
        assert counts == expected_counts(written)
    finally:
        code = stop_service(service, signal.SIGTERM)
    assert code == 0, "".join(service.output)
