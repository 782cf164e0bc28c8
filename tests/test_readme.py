"""The README tells the truth about configuration and commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_table_matches_the_config_classes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_table.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    readme = (ROOT / "README.md").read_text()
    assert result.stdout.strip() in readme, (
        "README's configuration table is stale: run `python scripts/config_table.py --write`"
    )


def test_every_documented_command_has_help() -> None:
    for command in ("run", "store", "receiver", "migrate", "send", "echo", "watch"):
        result = subprocess.run(
            [sys.executable, "-m", "seriesflow", command, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert f"seriesflow {command}" in result.stdout
        assert f"`seriesflow {command}" in (ROOT / "README.md").read_text()


def test_the_public_contract_settings_have_the_documented_defaults() -> None:
    readme = (ROOT / "README.md").read_text()
    for row in (
        "| `SERIESFLOW_AE_TITLE` | `--ae-title`, `--called-ae` | `STORESCP` |",
        "| `SERIESFLOW_DICOM_PORT` | `--dicom-port`, `--port` | `6667` |",
        "| `SERIESFLOW_GRPC_PORT` | `--grpc-port` | `50051` |",
        "| `SERIESFLOW_STORE_ADDRESS` | `--store-address` | `localhost:50051` |",
    ):
        assert row in readme
