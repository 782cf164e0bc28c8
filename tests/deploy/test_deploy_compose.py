"""docker-compose.yml and .env: validated by docker-compose itself, then checked for wiring.

`docker-compose config` (which parses, interpolates .env and validates the file against its
schema) is the tool's verdict; the tests below check what the schema cannot: that names,
ports and mounts agree between services and config files, that .env holds every setting a
user changes and the file none of the credentials, and that the profiles hold what they
say. test_compose_up.py brings the file up on a Docker engine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import require_tool
from deploy_runtime import orthanc_config, resolved_compose
from deploy_support import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_FILE = ROOT / ".env"
SERIESFLOW_SERVICES = ("migrate", "store", "receiver")
ONE_SHOT = ("migrate", "grpc-tokens")
PROFILES = {
    "prometheus": ["monitoring"],
    "alertmanager": ["monitoring"],
    "grafana": ["monitoring"],
    "orthanc": ["pacs"],
}
# ${NAME}, ${NAME:-default} or ${NAME:?message}; $${NAME} is the container's own variable.
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model as docker-compose resolves it (.env read, anchors merged, paths
    absolute)."""
    return resolved_compose()


def dot_env() -> dict[str, str]:
    settings = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def variables() -> dict[str, set[tuple[str, str]]]:
    """Each variable the compose file interpolates -> its (operator, default/message) uses."""
    found: dict[str, set[tuple[str, str]]] = {}
    for name, operator, argument in VARIABLE.findall(COMPOSE_FILE.read_text()):
        found.setdefault(name, set()).add((operator, argument))
    return found


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
        "alertmanager",
        "grafana",
        "orthanc",
    }


def test_profiles_leave_the_core_on_and_make_monitoring_and_the_pacs_optional(
    compose: dict[str, Any],
) -> None:
    found = {name: s["profiles"] for name, s in services(compose).items() if "profiles" in s}
    assert found == PROFILES
    # No service outside a profile depends on one inside: `docker compose up` alone works.
    for name, service in services(compose).items():
        if name not in PROFILES:
            assert not set(service.get("depends_on", {})) & set(PROFILES), name
    assert dot_env()["COMPOSE_PROFILES"] == "", "the default .env starts only the core"


def test_dot_env_holds_each_setting_and_the_file_only_references_them() -> None:
    settings, used = dot_env(), variables()
    for name, uses in used.items():
        operators = {operator for operator, _ in uses}
        if name in settings:
            # A user's setting: .env names it, and any default in the file agrees.
            defaults = {argument for operator, argument in uses if operator == ":-"}
            assert defaults <= {settings[name]}, f"{name}: .env {settings[name]}, file {defaults}"
        else:
            # Not a user's setting: where each service listens inside its container,
            # moved only when the services share the host's network (test_compose_up.py).
            assert name == "SERIESFLOW_LISTEN_HOST" or name.endswith("_LISTEN_PORT"), name
            assert operators == {":-"}, f"{name} has a default in the file"
    assert set(settings) - set(used) == {"COMPOSE_PROFILES"}, "every .env entry is used"
    for name in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ORTHANC_PASSWORD"):
        assert used[name] == {(":?", f"set {name} in .env")}, f"{name} is required, from .env"


def test_no_credential_is_written_in_the_compose_file(tmp_path: Path) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # anchors merged, nothing interpolated
    for name, service in raw["services"].items():
        for key, value in service.get("environment", {}).items():
            literal = VARIABLE.sub("", str(value))
            if key.endswith(("_USER", "_PASSWORD", "_DB")):
                assert literal == "", f"{name}: {key} written in the file"
            elif key == "SERIESFLOW_DATABASE_URL":
                url = urlsplit(literal)
                assert not url.username and not url.password, f"{name}: {key}"
        healthcheck = " ".join(service.get("healthcheck", {}).get("test", []))
        # Credentials in a healthcheck: the container's own variables ($$NAME) only.
        for flag in re.findall(r"(?:--user=|--pwd=|-U |-d )(\S+)", healthcheck):
            assert flag.strip('"').startswith("$${"), f"{name}: healthcheck {flag}"
    # Without .env, compose refuses to start and says which setting is missing.
    tool = require_tool("docker-compose")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [tool, "--project-directory", str(ROOT), "--env-file", str(empty), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert re.search(r"set \w+ in \.env", result.stderr), result.stderr


def test_published_ports_follow_dot_env_and_the_containers_keep_theirs() -> None:
    moved = {"DICOM_PORT": "11112", "GRPC_PORT": "50052", "PROMETHEUS_PORT": "19090"}
    default, changed = resolved_compose(), resolved_compose(moved)
    assert published(changed, "receiver") == {("", 11112, 6667), ("127.0.0.1", 8081, 8081)}
    assert ("127.0.0.1", 50052, 50051) in published(changed, "store")
    assert published(changed, "prometheus") == {("127.0.0.1", 19090, 9090)}
    for name in services(default):
        if name not in ("receiver", "store", "prometheus"):
            assert published(changed, name) == published(default, name), name
        # Inside the containers nothing moved: environment, commands and healthchecks.
        for key in ("environment", "command", "healthcheck"):
            assert services(changed)[name].get(key) == services(default)[name].get(key)


def test_on_the_host_network_every_listener_follows_the_listen_variables() -> None:
    # What test_compose_up.py relies on: with SERIESFLOW_LISTEN_HOST and a *_LISTEN_PORT
    # each, no service listens on, probes or connects to a default port.
    ports = {name: str(20000 + i) for i, name in enumerate(sorted(variables()))}
    listen = {k: v for k, v in ports.items() if k.endswith("_LISTEN_PORT")}
    moved = resolved_compose({**listen, "SERIESFLOW_LISTEN_HOST": "127.0.0.1"})
    text = json.dumps(
        {
            name: {k: s.get(k) for k in ("environment", "command", "healthcheck")}
            for name, s in services(moved).items()
        }
    )
    defaults = {
        int(d) for uses in variables().values() for op, d in uses if op == ":-" and d.isdigit()
    }
    for default in defaults:
        assert not re.search(rf"\b{default}\b", text), f"{default} still used on the host"
    assert "0.0.0.0" not in text
    for port in listen.values():
        assert port in text


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
    assert order["prometheus"] == {"store", "receiver", "alertmanager"}
    assert order["alertmanager"] == set()
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
        assert (url.hostname, url.port) == ("postgres", int(postgres["PGPORT"]))
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
        ("alertmanager", (9093,)),
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
    prometheus_port = listen_port(service["command"])
    assert targets["prometheus"] == [f"localhost:{prometheus_port}"]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    alertmanager_port = listen_port(services(compose)["alertmanager"]["command"])
    assert alertmanagers["static_configs"] == [{"targets": [f"alertmanager:{alertmanager_port}"]}]


def listen_port(command: list[str]) -> int:
    (address,) = (a.split("=", 1)[1] for a in command if a.startswith("--web.listen-address="))
    return int(address.rsplit(":", 1)[1])


def test_alertmanager_config_passes_amtool_and_is_the_one_compose_mounts(
    compose: dict[str, Any],
) -> None:
    service = services(compose)["alertmanager"]
    config_path = next(
        a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file=")
    )
    host_config = Path(mounts(compose, "alertmanager")[config_path])
    assert host_config == ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    result = subprocess.run(
        [require_tool("amtool"), "check-config", str(host_config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--cluster.listen-address=" in service["command"], "one instance, no gossip port"
    port = listen_port(service["command"])
    assert f"http://127.0.0.1:{port}/-/ready" in service["healthcheck"]["test"]


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
    # As Orthanc reads it in the container: ${...} from the container's environment.
    config = orthanc_config(compose)
    receiver = env(compose, "receiver")
    assert config["DicomModalities"]["seriesflow"] == {
        "AET": receiver["SERIESFLOW_AE_TITLE"],
        "Host": "receiver",
        "Port": receiver["SERIESFLOW_DICOM_PORT"],
    }
    ((user, password),) = config["RegisteredUsers"].items()
    assert (user, password) == (dot_env()["ORTHANC_USER"], dot_env()["ORTHANC_PASSWORD"])
    # The credentials are the container's variables, in the file as ${...} only.
    raw = json.loads(config_file.read_text())
    assert raw["RegisteredUsers"] == {"${PACS_USER}": "${PACS_PASSWORD}"}
    healthcheck = " ".join(services(compose)["orthanc"]["healthcheck"]["test"])
    assert '--user="$${PACS_USER}"' in healthcheck
    assert "PACS_PASSWORD" in healthcheck
    # Orthanc refuses a setting defined in two of its files: the ports are left to the
    # image (and to the compose test's own file), the storage folder to the image.
    assert not {"HttpPort", "DicomPort", "DicomServerEnabled", "StorageDirectory"} & set(raw)


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
