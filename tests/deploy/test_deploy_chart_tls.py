"""TLS as the chart configures it, run for real: gRPC mutual TLS between receiver and store,
and DICOM TLS on the receiver, from Secrets in the kubernetes.io/tls layout.

openssl makes a CA and the three certificates; the chart is rendered with
ci/tls-existing-secrets-values.yaml; each file a container's environment names is looked
up through the pod's own volumes and mounts (env path -> mount -> Secret and key) and
written where the process can read it. Then the real `seriesflow migrate`, `store` and
`receiver` run with that environment (ports and the database localized), and dcmtk's
storescu sends a study over TLS. What this cannot show: Kubernetes itself, or a store
certificate matched by the Service's DNS name (it is dialled at 127.0.0.1 here, so the
certificate also names that address; the names cert-manager issues are checked in
test_deploy_chart_platform.py).
"""

from __future__ import annotations

import base64
import os
import posixpath
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port, require_tool
from deploy_support import CHART, ROOT, Manifest, by_kind, container_env, containers, one, render
from dicom_files import write_study
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seriesflow.v1 import series_store_pb2, series_store_pb2_grpc

PORT_SETTINGS = {
    "SERIESFLOW_GRPC_PORT",
    "SERIESFLOW_STORE_METRICS_PORT",
    "SERIESFLOW_STORE_HTTP_PORT",
    "SERIESFLOW_DICOM_PORT",
    "SERIESFLOW_RECEIVER_METRICS_PORT",
    "SERIESFLOW_STOW_PORT",
}
MOUNTED = "/etc/seriesflow/"


def openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(
        [require_tool("openssl"), *args], cwd=folder, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def make_certificates(folder: Path) -> dict[str, dict[str, bytes]]:
    """Secret name -> its data, as the ci value set names them."""
    folder.mkdir(parents=True)
    openssl(
        folder,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=seriesflow test CA"),
    )

    def leaf(name: str, common_name: str, extensions: str) -> tuple[bytes, bytes]:
        (folder / f"{name}.ext").write_text(extensions + "\n")
        openssl(
            folder,
            *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key"),
            *("-out", f"{name}.csr", "-subj", f"/CN={common_name}"),
        )
        openssl(
            folder,
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-days", "1", "-out", f"{name}.crt"),
            *("-extfile", f"{name}.ext"),
        )
        return (folder / f"{name}.crt").read_bytes(), (folder / f"{name}.key").read_bytes()

    ca = (folder / "ca.crt").read_bytes()
    server = "extendedKeyUsage=serverAuth\nsubjectAltName="
    store_crt, store_key = leaf(
        "store", "sf-seriesflow-store", server + "DNS:sf-seriesflow-store,IP:127.0.0.1"
    )
    client_crt, client_key = leaf(
        "receiver", "sf-seriesflow-receiver", "extendedKeyUsage=clientAuth"
    )
    dicom_crt, dicom_key = leaf(
        "dicom", "sf-seriesflow-receiver", server + "DNS:sf-seriesflow-receiver,IP:127.0.0.1"
    )
    return {
        "seriesflow-store-tls": {"tls.crt": store_crt, "tls.key": store_key, "ca.crt": ca},
        "seriesflow-receiver-tls": {"tls.crt": client_crt, "tls.key": client_key, "ca.crt": ca},
        "seriesflow-dicom-tls": {"tls.crt": dicom_crt, "tls.key": dicom_key},
    }


def mounted_source(workload: Manifest, container_name: str, path: str) -> tuple[str, str]:
    """(Secret, key) behind a file path in a container, through the pod's mounts."""
    spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    container = next(c for c in containers(workload) if c["name"] == container_name)
    for mount in container.get("volumeMounts", []):
        if posixpath.dirname(path) == mount["mountPath"]:
            secret = volumes[mount["name"]]["secret"]
            (item,) = [i for i in secret["items"] if i["path"] == posixpath.basename(path)]
            return secret["secretName"], item["key"]
    raise AssertionError(f"{container_name}: {path} is not mounted")


def mounted(container: Manifest, path: str) -> bool:
    """Whether the container mounts the file's folder. The migrate init container reads
    the store's ConfigMap but not its TLS or token files: it keeps their container paths,
    so a migrate that did open them would fail here as in a pod."""
    return any(m["mountPath"] == posixpath.dirname(path) for m in container.get("volumeMounts", []))


class Local:
    """The rendered environments, localized: ports, database, data and mounted files."""

    def __init__(
        self,
        objects: tuple[Manifest, ...],
        secrets: dict[str, dict[str, bytes]],
        root: Path,
        database_url: str,
    ) -> None:
        self.objects = objects
        self.root = root
        self.database_url = database_url
        self.ports: dict[str, int] = {}
        self.secrets = dict(secrets)
        for secret in by_kind(objects, "Secret"):  # the chart's own (gRPC tokens)
            self.secrets[secret["metadata"]["name"]] = {
                k: base64.b64decode(v) for k, v in secret["data"].items()
            }

    def port(self, value: str) -> int:
        return self.ports.setdefault(value, free_port())

    def file(self, workload: Manifest, container_name: str, path: str) -> str:
        secret, key = mounted_source(workload, container_name, path)
        local = self.root / "files" / secret / key
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self.secrets[secret][key])
        local.chmod(0o600)
        return str(local)

    def env(self, kind: str, suffix: str, container_name: str) -> dict[str, str]:
        workload = one(self.objects, kind, suffix)
        container = next(c for c in containers(workload) if c["name"] == container_name)
        local: dict[str, str] = {}
        for key, value in container_env(container, self.objects).items():
            if key == "SERIESFLOW_DATABASE_URL":
                local[key] = self.database_url
            elif isinstance(value, dict):
                assert value == {"fieldRef": {"fieldPath": "metadata.name"}}, (key, value)
                local[key] = "sf-seriesflow-receiver-0"
            elif key in PORT_SETTINGS:
                local[key] = str(self.port(value))
            elif key == "SERIESFLOW_LISTEN_HOST":
                local[key] = "127.0.0.1"
            elif key == "SERIESFLOW_DATA_DIR":
                local[key] = str(self.root / "data")
            elif key == "SERIESFLOW_STORE_ADDRESS":
                local[key] = f"127.0.0.1:{self.port(value.rsplit(':', 1)[1])}"
            elif value.startswith(MOUNTED) and mounted(container, value):
                local[key] = self.file(workload, container_name, value)
            else:
                local[key] = value
        return local


def process_env(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERIESFLOW_", "PG"))}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **settings}


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(args: str, settings: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{args}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "seriesflow", args],
            env=process_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        log.close()
        processes.append(process)
        return process

    yield start
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(what: str, check: Callable[[], bool], logs: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    text = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs.glob("*.log"))
    raise AssertionError(f"timed out waiting for {what}\n{text}")


def health(address: str, credentials: grpc.ChannelCredentials | None) -> int | None:
    channel = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return None
    return int(answer.status)


def test_receiver_and_store_speak_the_tls_the_chart_configures(
    tmp_path: Path, database_url: str, started: Callable[[str, dict[str, str]], Any]
) -> None:
    secrets = make_certificates(tmp_path / "certs")
    # A short idle timeout: the series is flushed a second after its last instance.
    objects = render(
        (CHART / "ci" / "tls-existing-secrets-values.yaml",), ("receiver.seriesIdleTimeout=1",)
    )
    local = Local(objects, secrets, tmp_path, database_url)
    migrate_env = local.env("Deployment", "-store", "migrate")
    store_env = local.env("Deployment", "-store", "store")
    receiver_env = local.env("StatefulSet", "-receiver", "receiver")
    assert (
        "SERIESFLOW_GRPC_TLS_CLIENT_CA" in store_env and "SERIESFLOW_DICOM_TLS_CERT" in receiver_env
    )

    migrated = subprocess.run(
        [sys.executable, "-m", "seriesflow", "migrate"],
        env=process_env(migrate_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stderr

    started("store", store_env)
    address = f"127.0.0.1:{store_env['SERIESFLOW_GRPC_PORT']}"
    client = secrets["seriesflow-receiver-tls"]
    mutual = grpc.ssl_channel_credentials(client["ca.crt"], client["tls.key"], client["tls.crt"])
    serving = health_pb2.HealthCheckResponse.SERVING
    wait_until("the store over mTLS", lambda: health(address, mutual) == serving, tmp_path)
    # Plaintext and TLS without a client certificate are both refused.
    assert health(address, None) is None
    assert health(address, grpc.ssl_channel_credentials(client["ca.crt"])) is None

    started("receiver", receiver_env)
    metrics = f"http://127.0.0.1:{receiver_env['SERIESFLOW_RECEIVER_METRICS_PORT']}/metrics"

    def connected() -> bool:
        try:
            with urllib.request.urlopen(metrics, timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return False
        return "seriesflow_receiver_store_connected 1.0" in text

    wait_until("the receiver's stream to the store", connected, tmp_path)

    dicom_port = receiver_env["SERIESFLOW_DICOM_PORT"]

    # `helm test`: the test pod's own commands, pointed at the local services and files.
    (pod,) = by_kind(objects, "Pod")
    spec = pod["spec"]
    (echo,) = spec["initContainers"]
    python, flag, script, _host, _port, ae_title = echo["command"]
    assert (python, flag) == ("python", "-c")
    echoed = subprocess.run(
        [sys.executable, "-c", script, "127.0.0.1", dicom_port, ae_title],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert echoed.returncode == 0 and "C-ECHO over TLS: 0" in echoed.stdout, echoed.stderr
    (store_health,) = spec["containers"]
    python, flag, script, _address, tls_dir = store_health["command"]
    for item in ("ca.crt", "tls.crt", "tls.key"):
        local.file(pod, "store-health", f"{tls_dir}/{item}")
    checked = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            address,
            str(tmp_path / "files" / "seriesflow-receiver-tls"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0 and "SERVING" in checked.stdout, checked.stderr
    ca_file = tmp_path / "certs" / "ca.crt"
    study = tmp_path / "study"
    written = write_study(study, [3])
    storescu = require_tool("storescu")
    base = [storescu, "-aec", receiver_env["SERIESFLOW_AE_TITLE"], "+sd", "+r"]
    plain = subprocess.run(
        [*base, "127.0.0.1", dicom_port, str(study)], capture_output=True, text=True, timeout=60
    )
    assert plain.returncode != 0, "the DICOM port must not accept plain TCP"
    sent = subprocess.run(
        [*base, "+tla", "+cf", str(ca_file), "127.0.0.1", dicom_port, str(study)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    read_token = local.secrets["sf-seriesflow-grpc-auth"]["read-tokens"].decode().splitlines()[0]

    def catalogued() -> bool:
        with grpc.secure_channel(address, mutual) as channel:
            stub = series_store_pb2_grpc.SeriesStoreStub(channel)
            answer = stub.ListSeries(
                series_store_pb2.ListSeriesRequest(page_size=100),
                timeout=5,
                metadata=[("authorization", f"Bearer {read_token}")],
            )
        found = {s.series_instance_uid: s.num_instances for s in answer.series}
        return found == {written[0].series_instance_uid: 3}

    wait_until("the study in the catalog", catalogued, tmp_path, timeout=90)
