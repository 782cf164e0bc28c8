"""The image built from the Dockerfile and run as users run it, on a private Docker engine.

Built once per session with BuildKit (and once more with the classic builder), on a Debian
base with Python made here (no registry is reachable: docker_engine.py). Every container
runs as `docker run` and the compose file run it: read-only root filesystem, tmpfs /tmp, a
named volume for /var/lib/seriesflow, the image's own non-root user, every capability
dropped, no-new-privileges. Host networking (the tests' daemon has no bridge), so each
container listens on 127.0.0.1 ports chosen here.

The database is a PostgreSQL container (Debian's postgresql on the same base; the image
carries no embedded PostgreSQL). DICOM goes in with dcmtk (echoscu, storescu), the catalog
is read with grpcurl through server reflection, as a user would from the README.

What this proves: the Dockerfile builds offline with both builders, the image's package,
entry point, user, labels and file-system assumptions work at runtime, and SIGTERM from
`docker stop` ends each service cleanly (exit 0) within the grace period. What it does not:
the official python/postgres images (stand-ins from Debian bookworm: Python 3.11,
PostgreSQL 15), or bridge networking and published ports.
"""

# ruff: noqa: F811  (fixtures are imported from docker_engine: pytest finds them by name)

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_tool
from dicom_files import write_study
from docker_engine import (  # noqa: F401 (fixtures)
    ROOT,
    Build,
    DockerEngine,
    base_image,
    docker_engine,
    postgres_image,
    project_image,
    project_version,
    running_postgres,
)

# `docker`: make test runs these after the rest, alone (image builds compete for the CPU).
pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    # The first test builds every image on a fresh machine (a Debian base with mmdebstrap,
    # the project's image with pip from PyPI, PostgreSQL and the stand-ins): minutes more
    # than the suite's 300 s default, once; cached by content afterwards.
    pytest.mark.timeout(1800),
]

UID = 10001
AE_TITLE = "STORESCP"
STOP_GRACE = 30  # seconds `docker stop` waits before SIGKILL
# The study sent in every case: two series of 3 and 2 instances.
SERIES_SIZES = [3, 2]
PORT_SETTINGS = {
    "store": (
        "SERIESFLOW_GRPC_PORT",
        "SERIESFLOW_STORE_METRICS_PORT",
        "SERIESFLOW_STORE_HTTP_PORT",
    ),
    "receiver": (
        "SERIESFLOW_DICOM_PORT",
        "SERIESFLOW_RECEIVER_METRICS_PORT",
        "SERIESFLOW_STOW_PORT",
    ),
}


@dataclass
class Container:
    """A detached container of the project's image, run with the users' hardening."""

    engine: DockerEngine
    name: str
    env: dict[str, str]
    volume: str

    def logs(self) -> str:
        result = self.engine.run("logs", "--tail", "80", self.name)
        return result.stdout + result.stderr

    def state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(
            self.engine.docker("inspect", "--format", "{{json .State}}", self.name)
        )
        return state

    def stop(self) -> tuple[int, float]:
        """`docker stop` (SIGTERM, SIGKILL after the grace): exit code and seconds taken."""
        began = time.monotonic()
        self.engine.docker("stop", "--time", str(STOP_GRACE), self.name, timeout=STOP_GRACE + 30)
        took = time.monotonic() - began
        return int(str(self.state()["ExitCode"])), took


def hardened_run_args(name: str, volume: str, env: dict[str, str]) -> list[str]:
    """`docker run` options as the compose file and the chart's pods give them."""
    args = [
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--mount",
        f"type=volume,source={volume},target=/var/lib/seriesflow",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return args


@pytest.fixture
def containers(docker_engine: DockerEngine) -> Iterator[list[Container]]:
    """Containers a test starts; removed (with their volumes) afterwards."""
    started: list[Container] = []
    yield started
    for container in started:
        docker_engine.run("rm", "--force", container.name, timeout=60)
        docker_engine.run("volume", "rm", container.volume, timeout=60)


def start(
    engine: DockerEngine,
    image: str,
    containers: list[Container],
    role: str,
    command: list[str],
    env: dict[str, str],
) -> Container:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    container = Container(engine, name, env, f"{name}-data")
    containers.append(container)
    engine.docker(
        "run", "--detach", *hardened_run_args(name, container.volume, env), image, *command
    )
    return container


def ports_for(*roles: str) -> dict[str, str]:
    env = {"SERIESFLOW_LISTEN_HOST": "127.0.0.1"}
    for role in roles:
        env.update({setting: str(free_port()) for setting in PORT_SETTINGS[role]})
    return env


def wait_until(
    what: str, check: Callable[[], bool], watched: list[Container], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for container in watched:
            if container.state()["Status"] != "running":
                raise AssertionError(
                    f"{container.name} exited while waiting for {what}:\n{container.logs()}"
                )
        time.sleep(0.3)
    logs = "\n".join(f"--- {c.name}\n{c.logs()}" for c in watched)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def grpcurl(address: str, method: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """A call through the server's reflection, as the README's grpcurl examples make."""
    result = subprocess.run(
        [
            require_tool("grpcurl"),
            "-plaintext",
            "-d",
            json.dumps(request or {}),
            address,
            f"seriesflow.v1.SeriesStore/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, f"grpcurl {method}: {result.stderr}"
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def grpc_serving(address: str) -> bool:
    result = subprocess.run(
        [
            require_tool("grpcurl"),
            "-plaintext",
            "-d",
            '{"service": "seriesflow.v1.SeriesStore"}',
            address,
            "grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode == 0 and json.loads(result.stdout).get("status") == "SERVING"


def process_status(engine: DockerEngine, container: Container) -> dict[str, str]:
    """/proc/PID/status of the container's main process, read on the host."""
    pid = engine.docker("inspect", "--format", "{{.State.Pid}}", container.name).strip()
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def assert_hardened(engine: DockerEngine, container: Container) -> None:
    """The process runs as the image's user, with no capabilities, and cannot gain any."""
    status = process_status(engine, container)
    assert status["Uid"].split() == [str(UID)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(UID)] * 4, status["Gid"]
    for capabilities in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[capabilities], 16) == 0, f"{capabilities}={status[capabilities]}"
    assert status["NoNewPrivs"].strip() == "1"
    root_write = engine.run(
        "exec", container.name, "python", "-c", "open('/seriesflow-probe', 'w')"
    )
    assert root_write.returncode != 0 and "Read-only file system" in root_write.stderr


def send_study_and_check_catalog(
    engine: DockerEngine, folder: Path, dicom_port: int, grpc_address: str, watched: list[Container]
) -> None:
    """C-ECHO, storescu of a two-series study, then ListSeries and ListStudies exactly."""
    echo = subprocess.run(
        [require_tool("echoscu"), "-aec", AE_TITLE, "127.0.0.1", str(dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    written = write_study(folder, SERIES_SIZES)
    sent = subprocess.run(
        [
            require_tool("storescu"),
            "-aec",
            AE_TITLE,
            "+sd",
            "+r",
            "127.0.0.1",
            str(dicom_port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr
    expected = {s.series_instance_uid: str(len(s.sop_instance_uids)) for s in written}

    def catalog() -> dict[str, Any]:
        return {
            str(s["seriesInstanceUid"]): s.get("numInstances")
            for s in grpcurl(grpc_address, "ListSeries", {"page_size": 100}).get("series", [])
        }

    wait_until("the study in ListSeries", lambda: catalog() == expected, watched)
    series = grpcurl(grpc_address, "ListSeries", {"page_size": 100})["series"]
    assert isinstance(series, list) and len(series) == len(SERIES_SIZES)
    assert {s["studyInstanceUid"] for s in series} == {written[0].study_instance_uid}
    studies = grpcurl(grpc_address, "ListStudies", {"page_size": 100})["studies"]
    assert isinstance(studies, list) and len(studies) == 1, studies
    [study] = studies
    assert study["studyInstanceUid"] == written[0].study_instance_uid
    assert study["numSeries"] == str(len(SERIES_SIZES))
    assert study["numInstances"] == str(sum(SERIES_SIZES))


def assert_spool_in_volume(engine: DockerEngine, container: Container) -> None:
    """The receiver's spool is in the named volume, written by the image's user: it
    survives the container, and nothing else on the read-only root was needed."""
    mountpoint = engine.docker(
        "volume", "inspect", "--format", "{{.Mountpoint}}", container.volume
    ).strip()
    spool = Path(mountpoint) / "spool"
    files = sorted(p.name for p in spool.iterdir())
    assert files, f"nothing in the receiver's spool volume {container.volume}"
    assert {p.stat().st_uid for p in [spool, *spool.iterdir()]} == {UID}, files


def assert_stops_cleanly(container: Container) -> None:
    code, took = container.stop()
    state = container.state()
    assert code == 0 and not state["OOMKilled"], (
        f"{container.name} exited {code} on docker stop:\n{container.logs()}"
    )
    assert took < STOP_GRACE, f"{container.name} took {took:.1f} s: SIGKILLed, not stopped"


def test_image_labels_user_and_contents(
    docker_engine: DockerEngine, project_image: str, classic_build: Build
) -> None:
    config = json.loads(
        docker_engine.docker("image", "inspect", "--format", "{{json .Config}}", project_image)
    )
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["seriesflow"]
    labels = config["Labels"]
    prefix = "org.opencontainers.image."
    assert labels[f"{prefix}version"] == project_version()
    # The commit checked out when the build started (HEAD may have moved since).
    revision = labels[f"{prefix}revision"]
    assert revision == docker_engine.project_args["REVISION"]
    subprocess.run(["git", "cat-file", "-e", f"{revision}^{{commit}}"], cwd=ROOT, check=True)
    assert f"SERIESFLOW_REVISION={revision}" in config["Env"]  # seriesflow_build_info's
    created = datetime.fromisoformat(labels[f"{prefix}created"])
    assert abs(datetime.now(UTC) - created) < timedelta(hours=2), created
    for name in ("title", "description", "licenses", "source"):
        assert labels[f"{prefix}{name}"], name
    assert labels[f"{prefix}source"].startswith("https://")
    # The embedded PostgreSQL stays out of the image (`pip install .` without the extra),
    # and so does pip: the venv holds what seriesflow imports.
    probe = docker_engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--entrypoint",
        "python",
        project_image,
        "-c",
        "import importlib.metadata as m, importlib.util as u, json, os; print(json.dumps(["
        "os.getuid(), [d.metadata['Name'].lower() for d in m.distributions()],"
        "u.find_spec('pgserver') is None, u.find_spec('pip') is None]))",
    )
    uid, distributions, no_pgserver, no_pip = json.loads(probe)
    assert uid == UID
    assert "seriesflow" in distributions and "pynetdicom" in distributions, distributions
    assert no_pgserver and "pgserver" not in distributions, distributions
    assert no_pip and "pip" not in distributions, distributions


def test_run_without_a_database_url_names_the_fix(
    docker_engine: DockerEngine, project_image: str
) -> None:
    result = docker_engine.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        project_image,
        "run",
    )
    assert result.returncode != 0
    assert "SERIESFLOW_DATABASE_URL" in result.stdout + result.stderr, result.stderr


def test_all_in_one_run_receives_a_study_and_stops_cleanly(
    docker_engine: DockerEngine,
    project_image: str,
    postgres_image: str,
    containers: list[Container],
    tmp_path: Path,
) -> None:
    with running_postgres(docker_engine, postgres_image) as db:
        env = {**ports_for("store", "receiver"), "SERIESFLOW_DATABASE_URL": db.url}
        run = start(docker_engine, project_image, containers, "run", ["run"], env)
        grpc_address = f"127.0.0.1:{env['SERIESFLOW_GRPC_PORT']}"
        ready = f"http://127.0.0.1:{env['SERIESFLOW_RECEIVER_METRICS_PORT']}/readyz"
        wait_until("receiver /readyz", lambda: http_status(ready) == 200, [run])
        wait_until("store SERVING", lambda: grpc_serving(grpc_address), [run])
        assert_hardened(docker_engine, run)
        send_study_and_check_catalog(
            docker_engine,
            tmp_path / "study",
            int(env["SERIESFLOW_DICOM_PORT"]),
            grpc_address,
            [run],
        )
        assert_spool_in_volume(docker_engine, run)
        assert_stops_cleanly(run)


def test_migrate_then_store_and_receiver_containers(
    docker_engine: DockerEngine,
    project_image: str,
    postgres_image: str,
    containers: list[Container],
    tmp_path: Path,
) -> None:
    with running_postgres(docker_engine, postgres_image) as db:
        database = {"SERIESFLOW_DATABASE_URL": db.url}
        # migrate: a one-shot container, run twice (an init container runs on every start).
        for _ in range(2):
            name = f"migrate-{uuid.uuid4().hex[:8]}"
            result = docker_engine.run(
                "run",
                "--rm",
                *hardened_run_args(
                    name, f"{name}-data", {**database, "SERIESFLOW_LOG_LEVEL": "INFO"}
                ),
                project_image,
                "migrate",
                timeout=120,
            )
            docker_engine.run("volume", "rm", f"{name}-data")
            assert result.returncode == 0, result.stdout + result.stderr
        store_env = {**ports_for("store"), **database}
        store = start(docker_engine, project_image, containers, "store", ["store"], store_env)
        grpc_address = f"127.0.0.1:{store_env['SERIESFLOW_GRPC_PORT']}"
        wait_until("store SERVING", lambda: grpc_serving(grpc_address), [store])
        receiver_env = {**ports_for("receiver"), "SERIESFLOW_STORE_ADDRESS": grpc_address}
        receiver = start(
            docker_engine, project_image, containers, "receiver", ["receiver"], receiver_env
        )
        ready = f"http://127.0.0.1:{receiver_env['SERIESFLOW_RECEIVER_METRICS_PORT']}/readyz"
        wait_until("receiver /readyz", lambda: http_status(ready) == 200, [store, receiver])
        for container in (store, receiver):
            assert_hardened(docker_engine, container)
        send_study_and_check_catalog(
            docker_engine,
            tmp_path / "study",
            int(receiver_env["SERIESFLOW_DICOM_PORT"]),
            grpc_address,
            [store, receiver],
        )
        assert_spool_in_volume(docker_engine, receiver)
        assert_stops_cleanly(receiver)
        assert_stops_cleanly(store)


@pytest.fixture(scope="module")
def classic_build(docker_engine: DockerEngine, project_image: str) -> Iterator[Build]:
    """The classic builder's image, built while the runtime tests run (they mostly wait)."""
    arguments = {**docker_engine.project_args}
    build = docker_engine.start_build(
        ROOT, "seriesflow-test/seriesflow:classic", arguments, buildkit=False
    )
    yield build
    build.cancel()


def test_classic_builder_builds_the_same_image(
    docker_engine: DockerEngine, project_image: str, classic_build: Build
) -> None:
    """DOCKER_BUILDKIT=0: the legacy builder, which some CI systems still use."""
    tag = classic_build.result()

    def facts(image: str) -> tuple[object, ...]:
        config = json.loads(
            docker_engine.docker("image", "inspect", "--format", "{{json .Config}}", image)
        )
        return config["User"], config["Entrypoint"], config["Env"], config["Labels"]

    assert facts(tag) == facts(project_image)
    help_text = docker_engine.docker("run", "--rm", "--network", "none", "--read-only", tag)
    assert "seriesflow" in help_text and "receiver" in help_text
