"""Run the containers of the chart and of the compose file as local processes.

Each container's environment is taken from the rendered chart (ConfigMaps, Secret and
downward-API references resolved) or from docker-compose.yml, then localized: the listen
address becomes 127.0.0.1, every port a free one, every service hostname 127.0.0.1, the
data folder a temporary one and the database URL the test database. Nothing else changes:
the same `seriesflow` arguments run with the same settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import yaml
from conftest import free_port, require_tool
from deploy_support import ROOT, by_kind, container_env, one, pod_spec, render
from dicom_files import write_study
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seriesflow.v1 import series_store_pb2, series_store_pb2_grpc

COMPOSE_FILE = ROOT / "docker-compose.yml"
CONTAINER_DATA_DIR = "/var/lib/seriesflow"
POD_NAME = "sf-seriesflow-receiver-0"
PORT_SETTINGS = (
    "SERIESFLOW_DICOM_PORT",
    "SERIESFLOW_GRPC_PORT",
    "SERIESFLOW_STORE_METRICS_PORT",
    "SERIESFLOW_RECEIVER_METRICS_PORT",
)


@dataclass(frozen=True)
class Container:
    """One seriesflow container: its `seriesflow` arguments and its raw environment."""

    name: str
    args: tuple[str, ...]
    env: dict[str, Any]


@dataclass(frozen=True)
class Source:
    """What a deployment file gives the three seriesflow containers, and its host names."""

    name: str
    containers: dict[str, Container]
    hostnames: frozenset[str]
    raw: Any = None


def chart_source() -> Source:
    """The default chart values: bundled PostgreSQL, migrations in the store's init container."""
    objects = render()
    store_pod = pod_spec(one(objects, "Deployment", "-store"))
    receiver_pod = pod_spec(one(objects, "StatefulSet", "-receiver"))
    migrate = next(c for c in store_pod["initContainers"] if c["name"] == "migrate")
    picked = {
        "migrate": migrate,
        "store": store_pod["containers"][0],
        "receiver": receiver_pod["containers"][0],
    }
    containers = {
        name: Container(name, tuple(c["args"]), container_env(c, objects))
        for name, c in picked.items()
    }
    hostnames = frozenset(s["metadata"]["name"] for s in by_kind(objects, "Service"))
    return Source("chart", containers, hostnames, objects)


def compose_source() -> Source:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    containers = {
        name: Container(
            name,
            tuple(compose["services"][name]["command"]),
            {k: str(v) for k, v in compose["services"][name]["environment"].items()},
        )
        for name in ("migrate", "store", "receiver")
    }
    return Source("compose", containers, frozenset(compose["services"]), compose)


@dataclass
class Localizer:
    """Maps container addresses to local ones; one free port per port setting."""

    hostnames: frozenset[str]
    database_url: str
    data_dir: Path
    ports: dict[int, int] = field(default_factory=dict)

    def port(self, container_port: int | str) -> int:
        number = int(container_port)
        if number not in self.ports:
            self.ports[number] = free_port()
        return self.ports[number]

    def address(self, host_port: str) -> str:
        host, port = host_port.rsplit(":", 1)
        assert host in self.hostnames | {"127.0.0.1", "localhost"}, f"unknown host {host}"
        return f"127.0.0.1:{self.port(port)}"

    def args(self, args: list[str]) -> list[str]:
        """Command-line flags naming a host or a port (the helm test pod's), localized."""
        local = []
        for arg in args:
            flag, _, value = arg.partition("=")
            if flag == "--host":
                assert value in self.hostnames, arg
                arg = f"{flag}=127.0.0.1"
            elif flag.endswith("-port") and value:
                arg = f"{flag}={self.port(value)}"
            local.append(arg)
        return local

    def env(self, container: Container) -> dict[str, str]:
        local: dict[str, str] = {}
        for key, value in container.env.items():
            if isinstance(value, dict):
                local[key] = self._reference(key, value)
            elif key == "SERIESFLOW_DATABASE_URL":
                assert urlsplit(value).hostname in self.hostnames, value
                local[key] = self.database_url
            elif key == "SERIESFLOW_LISTEN_HOST":
                assert value == "0.0.0.0", "containers listen on every interface"
                local[key] = "127.0.0.1"
            elif key in PORT_SETTINGS:
                local[key] = str(self.port(value))
            elif key == "SERIESFLOW_DATA_DIR":
                assert value == CONTAINER_DATA_DIR, value
                local[key] = str(self.data_dir)
            elif key == "SERIESFLOW_STORE_ADDRESS":
                local[key] = self.address(value)
            else:
                # Any other setting naming a service would need localizing too.
                assert not any(
                    value == host or f"{host}:" in value or f"@{host}" in value
                    for host in self.hostnames
                ), f"{key}={value} names a service: localize it"
                local[key] = value
        return local

    def _reference(self, key: str, ref: dict[str, Any]) -> str:
        if "secretKeyRef" in ref:
            assert key == "SERIESFLOW_DATABASE_URL", f"{key} from a Secret"
            return self.database_url
        if ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            return POD_NAME
        raise AssertionError(f"{key}: cannot resolve {ref}")


def seriesflow_command(args: tuple[str, ...] | list[str]) -> list[str]:
    """The image's ENTRYPOINT, `seriesflow`, from this environment."""
    script = Path(sys.executable).parent / "seriesflow"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "seriesflow"]
    return [*base, *args]


def process_env(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")}
    # The repository first, as in the image where the package is installed, not linked.
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings)
    return env


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start(name: str, args: tuple[str, ...], settings: dict[str, str], folder: Path) -> Service:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            seriesflow_command(args),
            env=process_env(settings),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    return Service(name, process, log)


def stop(service: Service, timeout: float = 30) -> int:
    """SIGTERM, as Kubernetes and docker stop send; the exit code, or kill after timeout."""
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
    try:
        return service.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()
        raise AssertionError(f"{service.name} ignored SIGTERM for {timeout} s") from None


def wait_until(
    what: str, check: Callable[[], bool], services: list[Service], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for service in services:
            if service.process.poll() is not None:
                raise AssertionError(
                    f"{service.name} exited while waiting for {what}:\n{service.output()}"
                )
        time.sleep(0.2)
    logs = "\n".join(f"--- {s.name}\n{s.output()}" for s in services)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def grpc_health(address: str, service: str) -> int | None:
    """The grpc.health.v1 status, or None when the server does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return None
    return int(answer.status)


SERVING = health_pb2.HealthCheckResponse.SERVING


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def list_series(address: str) -> list[series_store_pb2.Series]:
    with grpc.insecure_channel(address) as channel:
        stub = series_store_pb2_grpc.SeriesStoreStub(channel)
        answer = stub.ListSeries(series_store_pb2.ListSeriesRequest(page_size=100), timeout=10)
    return list(answer.series)


def http_json(url: str, data: bytes | None = None, auth: str | None = None) -> Any:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if auth is not None:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


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
    def dicom_port(self) -> int:
        return int(self.local("receiver", "SERIESFLOW_DICOM_PORT"))


def run_migrate(settings: dict[str, str], args: tuple[str, ...], folder: Path) -> None:
    result = subprocess.run(
        seriesflow_command(args),
        env=process_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@contextmanager
def deployed(source: Source, database_url: str, folder: Path) -> Iterator[Running]:
    """migrate, then store and receiver, each healthy, as their deployment file says."""
    folder.mkdir(parents=True, exist_ok=True)
    localizer = Localizer(source.hostnames, database_url, folder / "data")
    settings = {name: localizer.env(c) for name, c in source.containers.items()}
    migrate = source.containers["migrate"]
    # Init containers run again on every pod start: the second run must be a no-op.
    run_migrate(settings["migrate"], migrate.args, folder)
    run_migrate(settings["migrate"], migrate.args, folder)
    store = start("store", source.containers["store"].args, settings["store"], folder)
    started = [store]
    try:
        address = f"127.0.0.1:{settings['store']['SERIESFLOW_GRPC_PORT']}"
        wait_until(
            "store SERVING",
            lambda: grpc_health(address, "seriesflow.v1.SeriesStore") == SERVING,
            started,
        )
        receiver = start(
            "receiver", source.containers["receiver"].args, settings["receiver"], folder
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
        found = {s.series_instance_uid: s.num_instances for s in list_series(running.grpc_address)}
        return all(found.get(uid) == count for uid, count in expected.items())

    wait_until("series in the catalog", arrived, [running.store, running.receiver], timeout=90)
    return [s for s in list_series(running.grpc_address) if s.series_instance_uid in expected]
