"""docker-compose.yml brought up with docker-compose on the tests' private Docker engine.

Every service of every profile (monitoring, pacs) starts from the committed file and .env,
with one override this test writes:
- images: the project's image built from the Dockerfile (docker_engine), and stand-ins
  built here from Debian packages for the pinned upstream images, which no registry can
  supply here: PostgreSQL 15 (tests/deploy/images/postgresql), Prometheus, Alertmanager
  0.25 and Orthanc 1.10 with DICOMweb (tests/deploy/images/compose/). Grafana has no Debian
  package: its stand-in only checks its mounts and settings and answers the healthcheck;
- networking: the engine has no bridge, so every service shares the host's network
  (network_mode: host), each listens on a free 127.0.0.1 port through the file's
  *_LISTEN_PORT variables and SERIESFLOW_LISTEN_HOST, and the service names resolve to
  127.0.0.1 (extra_hosts). docker-compose refuses published ports on the host's network,
  so the file is resolved with the override by `docker-compose config` and its `ports`
  dropped (the engine would discard them anyway);
- the two configuration files that name ports: Prometheus gets prometheus.yml with its
  targets' ports moved to the listen ports and 1 s scrape and evaluation intervals (hosts,
  jobs, rule files and alerting unchanged);
  Orthanc gets one more file beside orthanc.json with its HTTP port (orthanc.json has
  none) and no DICOM listener (Orthanc 1.10 cannot bind it to loopback only; its HTTP port
  it cannot either, so this run's Orthanc password is a random one, not .env's);
- healthchecks poll every 2 s instead of every 5-10 s (their commands unchanged).

What it proves: the file's wiring (dependencies and their conditions, environment and
variables, volumes and mounts, tokens, profiles), that every healthcheck command passes
against the running service, and the project's image running as compose runs it: migrate
completes, Orthanc configured by deploy/orthanc/orthanc.json sends a study that appears
complete in ListSeries with exact counts, Prometheus scrapes every target, loads every
rule and has the compose Alertmanager (running alertmanager.yml) as its active one, and
store and receiver stop with exit code 0 on `docker-compose stop`. What it cannot prove:
the pinned upstream images (their versions, entrypoints and probes; Grafana entirely),
bridge networking, DNS between containers and published ports (test_deploy_compose.py
checks those statically), or an alert delivered (none fires in so short a run).
"""

# ruff: noqa: F811  (fixtures are imported from docker_engine: pytest finds them by name)

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, require_tool
from deploy_runtime import http_json, list_series
from dicom_files import write_study
from docker_engine import (  # noqa: F401 (fixtures)
    IMAGES,
    ROOT,
    DockerEngine,
    docker_engine,
    postgres_image,
    project_image,
)

from seriesflow.v1 import series_store_pb2

# `make test` runs the docker-marked tests alone, after the rest, on one engine.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.docker,
    # The first test builds every image on a fresh machine (a Debian base with mmdebstrap,
    # the project's image with pip from PyPI, PostgreSQL and the stand-ins): minutes more
    # than the suite's 300 s default, once; cached by content afterwards.
    pytest.mark.timeout(1800),
]

COMPOSE_FILE = ROOT / "docker-compose.yml"
STANDINS = IMAGES / "compose"
PROFILES = ("monitoring", "pacs")
ONE_SHOT = ("migrate", "grpc-tokens")
SERIESFLOW = ("migrate", "grpc-tokens", "store", "receiver")
# Two series of 3 and 2 instances, sent by Orthanc.
SERIES_SIZES = [3, 2]
ORTHANC_USER = "orthanc"
LISTEN_PORT = re.compile(r"\$\{([A-Z_]+_LISTEN_PORT):-(\d+)\}")


def listen_port_defaults() -> dict[str, int]:
    """Each *_LISTEN_PORT variable of the compose file and its default."""
    found: dict[str, int] = {}
    for name, default in LISTEN_PORT.findall(COMPOSE_FILE.read_text()):
        assert found.setdefault(name, int(default)) == int(default), f"{name}: two defaults"
    return found


@dataclass
class Stack:
    engine: DockerEngine
    folder: Path
    project: str
    variables: dict[str, str]
    resolved: dict[str, Any]

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [require_tool("docker-compose"), "--project-name", self.project]
        command += ["--file", str(self.folder / "compose.yml")]
        for profile in PROFILES:
            command += ["--profile", profile]
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.engine.env, **self.variables},
            cwd=ROOT,
        )

    def checked(self, *args: str, timeout: float = 300) -> str:
        result = self.compose(*args, timeout=timeout)
        assert result.returncode == 0, (
            f"docker-compose {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}\n{self.logs()}"
        )
        return result.stdout

    def port(self, variable: str) -> int:
        return int(self.variables[variable])

    def states(self) -> dict[str, dict[str, Any]]:
        """Each service's container state (docker inspect .State), by service name."""
        label = f"label=com.docker.compose.project={self.project}"
        ids = self.engine.docker("ps", "--all", "--quiet", "--filter", label).split()
        found: dict[str, dict[str, Any]] = {}
        for container in json.loads(self.engine.docker("inspect", *ids)) if ids else []:
            service = container["Config"]["Labels"]["com.docker.compose.service"]
            assert service not in found, f"two containers of {service}"
            found[service] = container["State"]
        return found

    def logs(self) -> str:
        result = self.compose("logs", "--no-color", "--tail", "40", timeout=60)
        return result.stdout[-12000:]


def override(images: dict[str, str], variables: dict[str, str], folder: Path) -> dict[str, Any]:
    """The test's changes to docker-compose.yml (see the module docstring)."""
    ports = {name: int(variables[name]) for name in listen_port_defaults()}
    # prometheus.yml's targets name the listen ports' defaults: move each to its variable.
    by_default = {default: ports[name] for name, default in listen_port_defaults().items()}
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    # Scrapes and rule evaluations every second: the first scrape comes without a wait.
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for section in [*config["scrape_configs"], *config["alerting"]["alertmanagers"]]:
        for static in section["static_configs"]:
            moved = []
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert int(port) in by_default, f"prometheus.yml: {target} is no listen port"
                moved.append(f"{host}:{by_default[int(port)]}")
            static["targets"] = moved
    prometheus_yml = folder / "prometheus.yml"
    prometheus_yml.write_text(yaml.safe_dump(config))
    orthanc_http = free_port()
    orthanc_json = folder / "orthanc-test.json"
    orthanc_json.write_text(json.dumps({"HttpPort": orthanc_http, "DicomServerEnabled": False}))
    variables["ORTHANC_TEST_HTTP_PORT"] = str(orthanc_http)
    hosts = [f"{name}:127.0.0.1" for name in yaml.safe_load(COMPOSE_FILE.read_text())["services"]]
    services: dict[str, Any] = {
        # Not 1 s: nine healthchecks (several start a Python) would keep a small machine busy.
        name: {"network_mode": "host", "extra_hosts": hosts, "healthcheck": {"interval": "2s"}}
        for name in images
    }
    for name, image in images.items():
        services[name]["image"] = image
    for name in ONE_SHOT:
        del services[name]["healthcheck"]
    services["postgres"]["environment"] = {"POSTGRES_LISTEN_ADDRESSES": "127.0.0.1"}
    services["prometheus"]["volumes"] = [f"{prometheus_yml}:/etc/prometheus/prometheus.yml:ro"]
    services["orthanc"]["volumes"] = [f"{orthanc_json}:/etc/orthanc/test-ports.json:ro"]
    services["orthanc"]["environment"] = {"ORTHANC_STANDIN_HTTP_PORT": str(orthanc_http)}
    return {"version": "3.9", "services": services}


@pytest.fixture(scope="module")
def stack(
    docker_engine: DockerEngine, project_image: str, postgres_image: str, tmp_path_factory: Any
) -> Iterator[Stack]:
    engine = docker_engine
    images = {name: project_image for name in SERIESFLOW}
    images["postgres"] = postgres_image
    for name in ("prometheus", "alertmanager", "orthanc", "grafana"):
        images[name] = engine.folder_image(STANDINS / name)
    folder = Path(tmp_path_factory.mktemp("compose"))
    variables = {name: str(free_port()) for name in listen_port_defaults()}
    variables["SERIESFLOW_LISTEN_HOST"] = "127.0.0.1"
    # Orthanc's HTTP port listens on every interface (1.10 cannot bind to loopback only):
    # a password of this run's own, not .env's demo one. The rest comes from .env.
    variables["ORTHANC_PASSWORD"] = secrets.token_urlsafe(16)
    (folder / "override.yml").write_text(yaml.safe_dump(override(images, variables, folder)))
    project = f"sfcompose{secrets.token_hex(4)}"
    resolve = subprocess.run(
        [
            require_tool("docker-compose"),
            "--project-directory",
            str(ROOT),
            "--file",
            str(COMPOSE_FILE),
            "--file",
            str(folder / "override.yml"),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**engine.env, **variables},
        cwd=ROOT,
    )
    assert resolve.returncode == 0, resolve.stderr
    resolved = yaml.safe_load(resolve.stdout)
    for service in resolved["services"].values():
        # Published ports and the host's network cannot be combined (docker-compose says
        # so); every port is a listen port on 127.0.0.1 instead.
        service.pop("ports", None)
    (folder / "compose.yml").write_text(yaml.safe_dump(resolved))
    running = Stack(engine, folder, project, variables, resolved)
    try:
        yield running
    finally:
        running.compose("down", "--volumes", "--timeout", "30", timeout=180)


def wait_for(what: str, check: Any, stack: Stack, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")
        time.sleep(0.5)


def orthanc_request(stack: Stack, path: str, data: bytes | None = None) -> Any:
    url = f"http://127.0.0.1:{stack.port('ORTHANC_TEST_HTTP_PORT')}{path}"
    return http_json(url, data, f"{ORTHANC_USER}:{stack.variables['ORTHANC_PASSWORD']}")


def prometheus_api(stack: Stack, path: str) -> Any:
    url = f"http://127.0.0.1:{stack.port('PROMETHEUS_LISTEN_PORT')}/api/v1/{path}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]


def test_compose_up_brings_every_service_to_healthy_and_a_pacs_study_into_the_catalog(
    stack: Stack, tmp_path: Path
) -> None:
    services = set(stack.resolved["services"])
    assert services == {
        "postgres",
        "migrate",
        "grpc-tokens",
        "store",
        "receiver",
        "prometheus",
        "alertmanager",
        "grafana",
        "orthanc",
    }
    # `up` itself waits for each dependency's condition (healthy, or exited 0).
    stack.checked("up", "--detach", "--no-build", timeout=600)
    long_running = services - set(ONE_SHOT)

    def healthy() -> dict[str, dict[str, Any]] | None:
        states = stack.states()
        assert set(states) == services, states.keys()
        for name in long_running:
            assert states[name]["Status"] == "running", f"{name}: {states[name]}"
        ok = all(states[s].get("Health", {}).get("Status") == "healthy" for s in long_running)
        return states if ok else None

    states = wait_for("every service healthy", healthy, stack)
    for name in ONE_SHOT:
        assert (states[name]["Status"], states[name]["ExitCode"]) == ("exited", 0), name
    migrate_log = stack.checked("logs", "--no-color", "migrate")
    assert "database schema at head" in migrate_log, migrate_log

    # The read token as the compose file's header tells users to take it.
    token = stack.checked(
        "exec", "-T", "store", "head", "-n", "1", "/etc/seriesflow/grpc-auth/read-tokens"
    ).strip()
    assert len(token) >= 32
    grpc_address = f"127.0.0.1:{stack.port('GRPC_LISTEN_PORT')}"
    assert list_series(grpc_address, token) == []

    # Orthanc, configured by deploy/orthanc/orthanc.json, pushes a study to the receiver.
    modality = orthanc_request(stack, "/modalities/seriesflow/configuration")
    assert (modality["AET"], modality["Host"], modality["Port"]) == (
        "STORESCP",
        "receiver",
        stack.port("DICOM_LISTEN_PORT"),
    )
    written = write_study(tmp_path / "study", SERIES_SIZES)
    studies = {
        orthanc_request(stack, "/instances", path.read_bytes())["ParentStudy"]
        for series in written
        for path in series.files
    }
    assert len(studies) == 1
    body = json.dumps({"Resources": sorted(studies), "Synchronous": True}).encode()
    orthanc_request(stack, "/modalities/seriesflow/store", body)
    expected = {s.series_instance_uid: len(s.sop_instance_uids) for s in written}

    def catalog_complete() -> list[series_store_pb2.Series] | None:
        found = list_series(grpc_address, token)
        complete = all(s.status == series_store_pb2.SERIES_STATUS_COMPLETE for s in found)
        counts = {s.series_instance_uid: s.num_instances for s in found}
        return found if counts == expected and complete else None

    series = wait_for("the study complete in ListSeries", catalog_complete, stack, timeout=90)
    assert {s.study_instance_uid for s in series} == {written[0].study_instance_uid}
    assert {s.receiver_id for s in series} == {"receiver-0"}

    # Prometheus: every target up, the rules loaded, Alertmanager receiving.
    def targets_up() -> list[dict[str, Any]] | None:
        active = prometheus_api(stack, "targets")["activeTargets"]
        return active if active and all(t["health"] == "up" for t in active) else None

    active = wait_for("every Prometheus target up", targets_up, stack, timeout=60)
    assert {t["labels"]["job"] for t in active} == {
        "seriesflow-store",
        "seriesflow-receiver",
        "prometheus",
    }
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    expected_rules = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    loaded = prometheus_api(stack, "rules")["groups"]
    assert {r["name"] for g in loaded for r in g["rules"]} == expected_rules
    assert all(r["health"] == "ok" for g in loaded for r in g["rules"]), loaded
    alertmanager = f"alertmanager:{stack.port('ALERTMANAGER_LISTEN_PORT')}"
    alertmanagers = prometheus_api(stack, "alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in alertmanagers] == [f"http://{alertmanager}/api/v2/alerts"]
    # ... running deploy/alertmanager/alertmanager.yml, as its own API reports.
    url = f"http://127.0.0.1:{stack.port('ALERTMANAGER_LISTEN_PORT')}/api/v2/status"
    with urllib.request.urlopen(url, timeout=10) as answer:
        status = json.loads(answer.read())
    committed = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    loaded = yaml.safe_load(status["config"]["original"])
    assert loaded["route"]["receiver"] == committed["route"]["receiver"]
    assert [r["name"] for r in loaded["receivers"]] == [r["name"] for r in committed["receivers"]]

    # docker stop (SIGTERM, then the grace period): store and receiver end cleanly.
    stack.checked("stop", "--timeout", "30", "receiver", "store")
    states = stack.states()
    for name in ("receiver", "store"):
        assert (states[name]["Status"], states[name]["ExitCode"]) == ("exited", 0), name
