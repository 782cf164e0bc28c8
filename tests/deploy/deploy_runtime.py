"""Run the containers of the chart and of the compose file as local processes.

Each container's environment is taken from the rendered chart (ConfigMaps, Secret and
downward-API references resolved) or from docker-compose.yml, then localized: the listen
address becomes 127.0.0.1, every port a free one, every service hostname 127.0.0.1, the
data folder a temporary one and the database URL the test database. Nothing else changes:
the same `seriesflow` arguments run with the same settings.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import yaml
from conftest import free_port, require_tool
from deploy_support import ROOT, by_kind, container_env, one, pod_spec, render
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seriesflow.v1 import series_store_pb2, series_store_pb2_grpc

COMPOSE_FILE = ROOT / "docker-compose.yml"
CONTAINER_DATA_DIR = "/var/lib/seriesflow"
# Where the chart and compose mount files (the gRPC token Secret / volume) into containers.
CONTAINER_FILES_DIR = "/etc/seriesflow/"
POD_NAME = "sf-seriesflow-receiver-0"
PORT_SETTINGS = (
    "SERIESFLOW_DICOM_PORT",
    "SERIESFLOW_GRPC_PORT",
    "SERIESFLOW_STORE_METRICS_PORT",
    "SERIESFLOW_STORE_HTTP_PORT",
    "SERIESFLOW_RECEIVER_METRICS_PORT",
    "SERIESFLOW_STOW_PORT",
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
    # Files mounted into the containers (container path -> content), e.g. a Secret's keys.
    files: dict[str, str] = field(default_factory=dict)


def chart_source(values_files: tuple[Path, ...] = ()) -> Source:
    """The chart's containers; by default bundled PostgreSQL and init-container migrations.

    In migrations.mode=hook the migrate container is the pre-install hook Job's.
    """
    objects = render(values_files)
    store_pod = pod_spec(one(objects, "Deployment", "-store"))
    receiver_pod = pod_spec(one(objects, "StatefulSet", "-receiver"))
    jobs = by_kind(objects, "Job")
    if jobs:
        (migrate,) = pod_spec(one(objects, "Job", "-migrate"))["containers"]
    else:
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
    files: dict[str, str] = {}
    for pod, name in ((store_pod, "store"), (receiver_pod, "receiver")):
        files.update(_secret_files(pod, picked[name], objects))
    return Source("chart", containers, hostnames, objects, files)


def _secret_files(pod: dict[str, Any], container: dict[str, Any], objects: Any) -> dict[str, str]:
    """The files a container sees from the chart's Secret volumes (mountPath/item path)."""
    secrets = {o["metadata"]["name"]: o for o in by_kind(objects, "Secret")}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")  # spool: a claim template
        if secret is None:
            continue
        data = secrets[secret["secretName"]]["data"]
        for item in secret.get("items") or [{"key": k, "path": k} for k in data]:
            path = f"{mount['mountPath']}/{item['path']}"
            files[path] = base64.b64decode(data[item["key"]]).decode()
    return files


def resolved_compose(variables: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as docker-compose resolves it: .env and `variables` interpolated,
    anchors merged, paths absolute (`docker-compose config`)."""
    tool = require_tool("docker-compose")
    result = subprocess.run(
        [tool, "--project-directory", str(ROOT), "--file", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(variables or {})},
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def compose_source() -> Source:
    compose = resolved_compose()
    containers = {
        name: Container(
            name,
            tuple(compose["services"][name]["command"]),
            {k: str(v) for k, v in compose["services"][name]["environment"].items()},
        )
        for name in ("migrate", "store", "receiver")
    }
    return Source("compose", containers, frozenset(compose["services"]), compose)


ORTHANC_VARIABLE = re.compile(r"\$\{(\w+)\}")


def orthanc_config(compose: dict[str, Any]) -> dict[str, Any]:
    """deploy/orthanc/orthanc.json as Orthanc reads it in the compose orthanc container:
    each ${NAME} replaced by that container's environment variable (Orthanc substitutes
    them in keys and values; a modality's Port may be such a string)."""
    environment = {k: str(v) for k, v in compose["services"]["orthanc"]["environment"].items()}

    def value(match: re.Match[str]) -> str:
        assert match[1] in environment, f"orthanc.json uses {match[0]}: not in compose"
        return environment[match[1]]

    text = (ROOT / "deploy" / "orthanc" / "orthanc.json").read_text()
    return dict(json.loads(ORTHANC_VARIABLE.sub(value, text)))


@dataclass
class Localizer:
    """Maps container addresses to local ones; one free port per port setting."""

    hostnames: frozenset[str]
    database_url: str
    data_dir: Path
    ports: dict[int, int] = field(default_factory=dict)

    @property
    def files_dir(self) -> Path:
        return self.data_dir.parent / "mounted-files"

    def path(self, container_path: str) -> Path:
        """The local stand-in of a file mounted under /etc/seriesflow/ in a container."""
        assert container_path.startswith(CONTAINER_FILES_DIR), container_path
        return self.files_dir / container_path.removeprefix(CONTAINER_FILES_DIR)

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
            elif key.endswith("_FILE") and value.startswith(CONTAINER_FILES_DIR):
                local[key] = str(self.path(value))
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


# Runs the command in a private mount namespace whose root filesystem is read-only except
# for the folders given before "--": the pod's readOnlyRootFilesystem with its volumes.
_READ_ONLY_ROOT = (
    'set -e; while [ "$1" != -- ]; do mount --bind "$1" "$1"; shift; done; shift; '
    'mount -o remount,bind,ro /; exec "$@"'
)


def read_only_root(writable: list[Path]) -> list[str] | None:
    """A command prefix giving a read-only root with `writable` folders; None if impossible.

    Needs mount namespaces: root, or unprivileged user namespaces (then as mapped root).
    """
    for unshare in (
        ["unshare", "--mount", "--propagation", "private"],
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"],
    ):
        prefix = [*unshare, "sh", "-c", _READ_ONLY_ROOT, "sh", *map(str, writable), "--"]
        try:
            probe = subprocess.run(
                [*prefix, "sh", "-c", "! touch /.seriesflow-read-only-probe 2>/dev/null"],
                capture_output=True,
                timeout=30,
            )
        except FileNotFoundError:
            return None
        if probe.returncode == 0:
            return prefix
    return None


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start(
    name: str,
    args: tuple[str, ...],
    settings: dict[str, str],
    folder: Path,
    prefix: list[str] | None = None,
) -> Service:
    """Start `seriesflow ARGS`; with a prefix (read_only_root) the PID stays seriesflow's,
    since unshare and sh exec into it."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [*(prefix or []), *seriesflow_command(args)],
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


def list_series(address: str, token: str | None = None) -> list[series_store_pb2.Series]:
    metadata = None if token is None else [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(address) as channel:
        stub = series_store_pb2_grpc.SeriesStoreStub(channel)
        request = series_store_pb2.ListSeriesRequest(page_size=100)
        answer = stub.ListSeries(request, timeout=10, metadata=metadata)
    return list(answer.series)


def http_json(url: str, data: bytes | None = None, auth: str | None = None) -> Any:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if auth is not None:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())
