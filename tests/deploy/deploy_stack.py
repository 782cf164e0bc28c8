"""A whole deployment run locally: migrate, store and receiver as one deployment file says.

Built on deploy_runtime: the containers' environments localized, each process started like
its container (optionally on a read-only root filesystem), then driven with real DICOM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import require_tool
from deploy_runtime import (
    SERVING,
    Localizer,
    Service,
    Source,
    grpc_health,
    http_status,
    list_series,
    process_env,
    read_only_root,
    seriesflow_command,
    start,
    stop,
    wait_until,
)
from dicom_files import write_study


@dataclass
class Running:
    source: Source
    localizer: Localizer
    store: Service
    receiver: Service
    settings: dict[str, dict[str, str]]

    def local(self, container: str, setting: str) -> str:
        return self.settings[container][setting]

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.local('store', 'SERIESFLOW_GRPC_PORT')}"

    @property
    def read_token(self) -> str | None:
        """The first read token the store accepts; None when its API is open."""
        path = self.settings["store"].get("SERIESFLOW_GRPC_READ_TOKENS_FILE")
        return Path(path).read_text().splitlines()[0].strip() if path else None

    @property
    def dicom_port(self) -> int:
        return int(self.local("receiver", "SERIESFLOW_DICOM_PORT"))


def run_migrate(
    settings: dict[str, str], args: tuple[str, ...], folder: Path, prefix: list[str] | None = None
) -> None:
    result = subprocess.run(
        [*(prefix or []), *seriesflow_command(args)],
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def read_only_settings(folder: Path, name: str) -> tuple[dict[str, str], Path]:
    """What a read-only container has: a writable /tmp (an emptyDir) and a read-only HOME
    (the image's home, /var/lib/seriesflow, is only writable where a volume is mounted)."""
    tmp = folder / f"{name}-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    home = folder / "home"
    home.mkdir(exist_ok=True)
    # PYTHONDONTWRITEBYTECODE as in the image, whose bytecode is compiled at build time.
    return {"TMPDIR": str(tmp), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}, tmp


def provide_files(source: Source, localizer: Localizer) -> None:
    """The files the containers find mounted: the chart's Secret items as rendered; for
    compose, what its grpc-tokens one-shot service generates into its volume."""
    for container_path, content in source.files.items():
        local = localizer.path(container_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content)
    if source.name == "compose" and "grpc-tokens" in source.raw["services"]:
        service = source.raw["services"]["grpc-tokens"]
        python, *script = service["entrypoint"]
        assert python == "python"
        args = [str(localizer.path(a)) if a.startswith("/etc/") else a for a in service["command"]]
        for arg in args:
            Path(arg).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, *script, *args], check=True, timeout=60)


@contextmanager
def deployed(
    source: Source, database_url: str, folder: Path, read_only: bool = False
) -> Iterator[Running]:
    """migrate, then store and receiver, each healthy, as their deployment file says.

    With read_only, each process runs on a read-only root filesystem where only its /tmp
    stand-in and (receiver) its data volume are writable, as in the chart's pods.
    """
    folder.mkdir(parents=True, exist_ok=True)
    localizer = Localizer(source.hostnames, database_url, folder / "data")
    settings = {name: localizer.env(c) for name, c in source.containers.items()}
    prefixes: dict[str, list[str] | None] = dict.fromkeys(settings)
    if read_only:
        localizer.data_dir.mkdir(parents=True, exist_ok=True)
        for name in settings:
            extra, tmp = read_only_settings(folder, name)
            settings[name] = {**settings[name], **extra}
            volumes = [tmp, localizer.data_dir] if name == "receiver" else [tmp]
            prefixes[name] = read_only_root(volumes)
            assert prefixes[name] is not None, "cannot create a mount namespace here"
    provide_files(source, localizer)
    migrate = source.containers["migrate"]
    # Init containers run again on every pod start: the second run must be a no-op.
    run_migrate(settings["migrate"], migrate.args, folder, prefixes["migrate"])
    run_migrate(settings["migrate"], migrate.args, folder, prefixes["migrate"])
    store = start(
        "store", source.containers["store"].args, settings["store"], folder, prefixes["store"]
    )
    started = [store]
    try:
        address = f"127.0.0.1:{settings['store']['SERIESFLOW_GRPC_PORT']}"
        wait_until(
            "store SERVING",
            lambda: grpc_health(address, "seriesflow.v1.SeriesStore") == SERVING,
            started,
        )
        receiver = start(
            "receiver",
            source.containers["receiver"].args,
            settings["receiver"],
            folder,
            prefixes["receiver"],
        )
        started.append(receiver)
        ready = (
            f"http://127.0.0.1:{settings['receiver']['SERIESFLOW_RECEIVER_METRICS_PORT']}/readyz"
        )
        wait_until("receiver /readyz", lambda: http_status(ready) == 200, started)
        yield Running(source, localizer, store, receiver, settings)
    finally:
        codes = {s.name: stop(s) for s in reversed(started)}
    assert codes == {s.name: 0 for s in started}, "a clean SIGTERM shutdown exits 0"


def echoscu(ae_title: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-aec", ae_title, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def send_study(folder: Path, port: int, ae_title: str, sizes: list[int]) -> dict[str, int]:
    written = write_study(folder, sizes)
    sent = subprocess.run(
        [
            require_tool("storescu"),
            "-aec",
            ae_title,
            "+sd",
            "+r",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert sent.returncode == 0, sent.stderr
    return {s.series_instance_uid: len(s.sop_instance_uids) for s in written}


def wait_for_catalog(running: Running, expected: dict[str, int]) -> list[object]:
    def arrived() -> bool:
        found = {
            s.series_instance_uid: s.num_instances
            for s in list_series(running.grpc_address, running.read_token)
        }
        return all(found.get(uid) == count for uid, count in expected.items())

    wait_until("series in the catalog", arrived, [running.store, running.receiver], timeout=90)
    series = list_series(running.grpc_address, running.read_token)
    return [s for s in series if s.series_instance_uid in expected]
