"""docker-compose.yml: validated by docker-compose itself, then checked for wiring.

There is no Docker engine here, so `docker-compose config` (which parses, interpolates and
validates the file against its schema) is the tool's verdict; the tests below check what
the schema cannot: that names, ports and mounts agree between services and config files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import require_tool
from deploy_support import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
SERIESFLOW_SERVICES = ("migrate", "store", "receiver")
ONE_SHOT = ("migrate", "grpc-tokens")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model as docker-compose resolves it (anchors merged, paths absolute)."""
    tool = require_tool("docker-compose")
    result = subprocess.run(
        [tool, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def env(compose: dict[str, Any], service: str) -> dict[str, str]:
    return {k: str(v) for k, v in services(compose)[service].get("environment", {}).items()}


def mounts(compose: dict[str, Any], service: str) -> dict[str, str]:
    """Container path -> source (absolute host path for binds, volume name otherwise)."""
    found = {}
    for volume in services(compose)[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def published(compose: dict[str, Any], service: str) -> set[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port; "" = all addresses.

    docker-compose 1.29 prints "ip:host:container/tcp" strings, or a dict without an ip."""
    found = set()
    for port in services(compose)[service].get("ports", []):
        if isinstance(port, dict):
            found.add((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            *host, container = port.removesuffix("/tcp").split(":")
            address = host[0] if len(host) == 2 else ""
            found.add((address, int(host[-1]), int(container)))
    return found


def test_compose_file_passes_docker_compose_config(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {
        "postgres",
        "migrate",
        "grpc-tokens",
        "store",
        "receiver",
        "prometheus",
        "grafana",
        "orthanc",
    }


def test_long_running_services_have_healthchecks_and_wait_for_healthy_dependencies(
    compose: dict[str, Any],
) -> None:
    for name, service in services(compose).items():
        if name in ONE_SHOT:
            assert "healthcheck" not in service and service["restart"] == "no"
        else:
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
            assert service["restart"] == "unless-stopped", name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition == {"condition": expected}, f"{name} -> {dependency}"
    order = {name: set(s.get("depends_on", {})) for name, s in services(compose).items()}
    assert order["migrate"] == {"postgres"}
    assert order["store"] == {"postgres", "migrate", "grpc-tokens"}, (
        "the store starts on a migrated schema, with its token files"
    )
    assert order["grpc-tokens"] == set()
    assert order["receiver"] == {"store"}
    assert order["prometheus"] == {"store", "receiver"}
    assert order["grafana"] == {"prometheus"}
    assert order["orthanc"] == {"receiver"}


def test_state_lives_in_named_volumes_and_config_in_read_only_binds(
    compose: dict[str, Any],
) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source, _target, *mode = volume.split(":")
            if source.startswith("/"):
                assert Path(source).is_relative_to(ROOT / "deploy"), f"{name}: {volume}"
                assert Path(source).exists(), f"{name} mounts missing {source}"
                assert mode == ["ro"], f"{name}: config mounts are read-only ({volume})"
            else:
                assert source in declared, f"{name}: undeclared volume {source}"
                used.add(source)
    assert used == declared
    assert mounts(compose, "receiver")["/var/lib/seriesflow"] == "receiver-spool"
    assert env(compose, "receiver")["SERIESFLOW_DATA_DIR"] == "/var/lib/seriesflow"


def test_seriesflow_containers_share_the_image_and_run_locked_down(
    compose: dict[str, Any],
) -> None:
    for name in SERIESFLOW_SERVICES:
        service = services(compose)[name]
        assert service["image"] == "seriesflow:local"
        assert Path(service["build"]["context"]) == ROOT
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["tmpfs"] == ["/tmp"]
        assert service["command"] == [name]


def test_services_reach_each_other_by_the_names_and_ports_they_configure(
    compose: dict[str, Any],
) -> None:
    postgres = env(compose, "postgres")
    for name in ("migrate", "store"):
        url = urlsplit(env(compose, name)["SERIESFLOW_DATABASE_URL"])
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert (url.username, url.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
        assert url.path == "/" + postgres["POSTGRES_DB"]
    store, receiver = env(compose, "store"), env(compose, "receiver")
    assert receiver["SERIESFLOW_STORE_ADDRESS"] == f"store:{store['SERIESFLOW_GRPC_PORT']}"
    for name in ("store", "receiver"):
        assert env(compose, name)["SERIESFLOW_LISTEN_HOST"] == "0.0.0.0"
    dicom = int(receiver["SERIESFLOW_DICOM_PORT"])
    stow = int(receiver["SERIESFLOW_STOW_PORT"])
    assert published(compose, "receiver") == {("", dicom, dicom), ("127.0.0.1", stow, stow)}, (
        "DICOM is on every interface, STOW-RS (no token file here) on loopback"
    )
    http = int(store["SERIESFLOW_STORE_HTTP_PORT"])
    for name, ports in (
        ("store", (50051, http)),
        ("prometheus", (9090,)),
        ("grafana", (3000,)),
        ("orthanc", (8042,)),
    ):
        assert published(compose, name) == {("127.0.0.1", p, p) for p in ports}, (
            f"{name}: unauthenticated or demo-password ports stay on loopback"
        )


def test_healthchecks_probe_the_ports_the_services_listen_on(compose: dict[str, Any]) -> None:
    store_check = " ".join(services(compose)["store"]["healthcheck"]["test"])
    assert f"127.0.0.1:{env(compose, 'store')['SERIESFLOW_GRPC_PORT']}" in store_check
    assert "seriesflow.v1.SeriesStore" in store_check
    receiver_check = " ".join(services(compose)["receiver"]["healthcheck"]["test"])
    port = env(compose, "receiver")["SERIESFLOW_RECEIVER_METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in receiver_check


def test_prometheus_loads_the_alert_rules_and_scrapes_both_services(
    compose: dict[str, Any],
) -> None:
    service = services(compose)["prometheus"]
    config_path = next(
        a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file=")
    )
    mounted = mounts(compose, "prometheus")
    host_config = Path(mounted[config_path])
    assert host_config == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(host_config.read_text())
    # rule_files are relative to the config file: the rules must be mounted beside it.
    for rule_file in config["rule_files"]:
        container_path = str(Path(config_path).parent / rule_file)
        assert Path(mounted[container_path]) == ROOT / "deploy" / "prometheus" / "alerts.yml"
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in config["scrape_configs"]}
    store_port = env(compose, "store")["SERIESFLOW_STORE_METRICS_PORT"]
    receiver_port = env(compose, "receiver")["SERIESFLOW_RECEIVER_METRICS_PORT"]
    assert targets["seriesflow-store"] == [f"store:{store_port}"]
    assert targets["seriesflow-receiver"] == [f"receiver:{receiver_port}"]


def test_compose_prometheus_config_passes_promtool() -> None:
    promtool = require_tool("promtool")
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_grafana_provisions_the_prometheus_source_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    mounted = mounts(compose, "grafana")
    providers_dir = Path(mounted["/etc/grafana/provisioning/dashboards"])
    (provider_file,) = providers_dir.glob("*.yml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    dashboards_dir = Path(mounted[provider["options"]["path"]])
    assert dashboards_dir == ROOT / "deploy" / "grafana" / "dashboards"
    home = env(compose, "grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (
        Path(mounted[str(Path(home).parent)]) / Path(home).name
        == dashboards_dir / "seriesflow.json"
    )
    datasources_dir = Path(mounted["/etc/grafana/provisioning/datasources"])
    (datasource,) = yaml.safe_load((datasources_dir / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["url"] == "http://prometheus:9090"


def test_orthanc_has_the_receiver_as_a_dicom_modality(compose: dict[str, Any]) -> None:
    mounted = mounts(compose, "orthanc")
    config_file = next(Path(src) for dst, src in mounted.items() if dst.startswith("/etc/orthanc/"))
    assert config_file == ROOT / "deploy" / "orthanc" / "orthanc.json"
    config = json.loads(config_file.read_text())
    receiver = env(compose, "receiver")
    assert config["DicomModalities"]["seriesflow"] == {
        "AET": receiver["SERIESFLOW_AE_TITLE"],
        "Host": "receiver",
        "Port": int(receiver["SERIESFLOW_DICOM_PORT"]),
    }
    ((user, password),) = config["RegisteredUsers"].items()
    healthcheck = services(compose)["orthanc"]["healthcheck"]["test"]
    assert f"--user={user}" in healthcheck and f"--pwd={password}" in healthcheck


def test_the_grpc_api_requires_tokens_generated_into_a_volume_not_written_in_the_file(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    store, receiver = env(compose, "store"), env(compose, "receiver")
    assert store["SERIESFLOW_GRPC_AUTH"] == "token"
    folder = "/etc/seriesflow/grpc-auth"
    assert store["SERIESFLOW_GRPC_WRITE_TOKENS_FILE"] == f"{folder}/write-tokens"
    assert store["SERIESFLOW_GRPC_READ_TOKENS_FILE"] == f"{folder}/read-tokens"
    assert receiver["SERIESFLOW_STORE_TOKEN_FILE"] == f"{folder}/write-tokens"
    tokens = services(compose)["grpc-tokens"]
    assert mounts(compose, "grpc-tokens")[folder] == "grpc-auth"
    for name in ("store", "receiver"):
        assert f"grpc-auth:{folder}:ro" in services(compose)[name]["volumes"], name
    # The generator, run as compose runs it (entrypoint + command), twice: it creates
    # two different random tokens, readable by the image's group, and keeps them.
    python, *script = tokens["entrypoint"]
    assert python == "python" and tokens["user"] == "0:10001"
    volume = tmp_path / "grpc-auth"
    volume.mkdir()
    argv = [sys.executable, *script, *[c.replace(folder, str(volume)) for c in tokens["command"]]]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    first = {p.name: p.read_text() for p in volume.iterdir()}
    assert set(first) == {"write-tokens", "read-tokens"}
    assert first["write-tokens"] != first["read-tokens"]
    assert all(len(text.strip()) >= 32 for text in first.values())
    assert all((volume / name).stat().st_mode & 0o777 == 0o640 for name in first)
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    assert {p.name: p.read_text() for p in volume.iterdir()} == first
    raw = (ROOT / "docker-compose.yml").read_text()
    assert all(text.strip() not in raw for text in first.values())
