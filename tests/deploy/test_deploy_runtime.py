"""The environment the chart and the compose file give each container runs seriesflow.

No container engine or cluster runs here, so each container is run as a local process with
exactly the `seriesflow` arguments and SERIESFLOW_* settings its deployment file gives it,
localized (see deploy_runtime.py): migrate, then store and receiver, checked through the
same health endpoints the probes and healthchecks use, a C-ECHO, the helm test pod's
commands, the compose healthcheck commands and Orthanc configured as in compose.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI, free_port, require_tool
from deploy_runtime import (
    POD_NAME,
    SERVING,
    Localizer,
    chart_source,
    compose_source,
    grpc_health,
    http_json,
    http_status,
    orthanc_config,
    process_env,
    read_only_root,
    seriesflow_command,
    start,
    stop,
    wait_until,
)
from deploy_stack import deployed, echoscu, provide_files, send_study, wait_for_catalog
from deploy_support import CHART, by_kind, pod_spec, render_notes
from dicom_files import write_study

pytestmark = pytest.mark.slow


def test_chart_environment_runs_migrate_store_and_receiver_through_their_probes(
    database_url: str, tmp_path: Path
) -> None:
    source = chart_source()
    with deployed(source, database_url, tmp_path) as running:
        store_pod = pod_spec(
            next(
                o
                for o in by_kind(source.raw, "Deployment")
                if o["metadata"]["name"].endswith("-store")
            )
        )
        receiver_pod = pod_spec(by_kind(source.raw, "StatefulSet")[-1])
        store, receiver = store_pod["containers"][0], receiver_pod["containers"][0]
        assert receiver["name"] == "receiver"
        # The probes exactly as the chart declares them, against the local ports.
        for probe in ("startupProbe", "readinessProbe"):
            service = store[probe]["grpc"].get("service", "")
            assert grpc_health(running.grpc_address, service) == SERVING, probe
        metrics_port = running.local("receiver", "SERIESFLOW_RECEIVER_METRICS_PORT")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = receiver[probe]["httpGet"]["path"]
            assert http_status(f"http://127.0.0.1:{metrics_port}{path}") == 200, probe
        ae_title = running.local("receiver", "SERIESFLOW_AE_TITLE")
        echo = echoscu(ae_title, running.dicom_port)
        assert echo.returncode == 0, echo.stderr

        # `helm test`: the test pod's two containers, their addresses localized.
        (test_pod,) = by_kind(source.raw, "Pod")
        spec = pod_spec(test_pod)
        helm_echo = subprocess.run(
            seriesflow_command(running.localizer.args(spec["initContainers"][0]["args"])),
            env=process_env({}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert helm_echo.returncode == 0, helm_echo.stdout + helm_echo.stderr
        python, *health_args = spec["containers"][0]["command"]
        assert python == "python"
        health_args[-1] = running.localizer.address(health_args[-1])
        health = subprocess.run(
            [sys.executable, *health_args], capture_output=True, text=True, timeout=60
        )
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr

        # The commands NOTES.txt prints after `helm install`, with the port-forwards'
        # local ports pointing at the local processes instead.
        notes = render_notes((), tmp_path / "notes")
        commands = [
            line.strip()
            for line in notes.splitlines()
            if line.strip().startswith(("grpcurl ", "echoscu "))
        ]
        assert len(commands) >= 4, notes
        # The read token NOTES tells how to take from the chart's Secret ($TOKEN).
        assert running.read_token, "the chart turns authentication on"
        assert any("$TOKEN" in command for command in commands), notes
        for command in commands:
            words = shlex.split(
                command.replace("localhost:50051", running.grpc_address)
                .replace("localhost 6667", f"127.0.0.1 {running.dicom_port}")
                .replace("$TOKEN", running.read_token)
            )
            done = subprocess.run(
                [require_tool(words[0]), *words[1:]], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, f"{command}: {done.stderr}"

        expected = send_study(tmp_path / "dicom", running.dicom_port, ae_title, [3, 2])
        series = wait_for_catalog(running, expected)
        # SERIESFLOW_RECEIVER_ID comes from the downward API: the pod's name.
        assert {s.receiver_id for s in series} == {POD_NAME}


def test_chart_pods_work_on_a_read_only_root_filesystem(database_url: str, tmp_path: Path) -> None:
    # readOnlyRootFilesystem: only the pod's volumes are writable - an emptyDir for /tmp
    # (TMPDIR here) and, for the receiver, the spool volume. Migrate, serve, ingest.
    if read_only_root([tmp_path]) is None:
        message = "no mount namespaces here (needs root or user namespaces, and unshare)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with deployed(chart_source(), database_url, tmp_path, read_only=True) as running:
        ae_title = running.local("receiver", "SERIESFLOW_AE_TITLE")
        expected = send_study(tmp_path / "dicom", running.dicom_port, ae_title, [2, 2])
        wait_for_catalog(running, expected)
    spool = Path(running.local("receiver", "SERIESFLOW_DATA_DIR")) / "spool"
    assert any(spool.iterdir()), "the receiver spooled into its volume"


def test_hook_mode_job_migrates_the_database_its_stores_then_serve(
    database_url: str, tmp_path: Path
) -> None:
    # The pre-install hook Job has no ConfigMap (it runs before the release's objects
    # exist): its inline environment alone must migrate what the stores then require.
    source = chart_source((CHART / "ci" / "external-db-existing-secret-values.yaml",))
    assert source.containers["migrate"].env.keys() == {
        "SERIESFLOW_DATABASE_URL",
        "SERIESFLOW_LOG_LEVEL",
    }
    with deployed(source, database_url, tmp_path) as running:
        assert grpc_health(running.grpc_address, "seriesflow.v1.SeriesStore") == SERVING


def test_compose_environment_runs_the_stack_and_its_healthchecks_pass(
    database_url: str, tmp_path: Path
) -> None:
    source = compose_source()
    with deployed(source, database_url, tmp_path) as running:
        # Each compose healthcheck command, run as compose would inside the container.
        for name in ("store", "receiver"):
            kind, *command = source.raw["services"][name]["healthcheck"]["test"]
            assert kind == "CMD" and command[0] == "python"
            script = command[-1]
            for container_port, local_port in running.localizer.ports.items():
                script = script.replace(f"127.0.0.1:{container_port}", f"127.0.0.1:{local_port}")
            check = subprocess.run(
                [sys.executable, *command[1:-1], script],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert check.returncode == 0, f"{name} healthcheck: {check.stderr}"
        ae_title = running.local("receiver", "SERIESFLOW_AE_TITLE")
        echo = echoscu(ae_title, running.dicom_port)
        assert echo.returncode == 0, echo.stderr
        expected = send_study(tmp_path / "dicom", running.dicom_port, ae_title, [2])
        series = wait_for_catalog(running, expected)
        assert {s.receiver_id for s in series} == {
            running.local("receiver", "SERIESFLOW_RECEIVER_ID")
        }


def test_compose_healthcheck_fails_when_the_store_is_not_serving(tmp_path: Path) -> None:
    # The same one-liner against a port nothing listens on: exit code 1, not a pass.
    source = compose_source()
    _, *command = source.raw["services"]["store"]["healthcheck"]["test"]
    script = command[-1].replace("127.0.0.1:50051", f"127.0.0.1:{free_port()}")
    check = subprocess.run(
        [sys.executable, *command[1:-1], script], capture_output=True, text=True, timeout=30
    )
    assert check.returncode != 0


def test_orthanc_configured_as_in_compose_sends_a_study_to_the_receiver(
    database_url: str, tmp_path: Path
) -> None:
    binary = require_tool("Orthanc")
    source = compose_source()
    # orthanc.json's ${...} as the compose orthanc container's environment fills them.
    config = orthanc_config(source.raw)
    with deployed(source, database_url, tmp_path) as running:
        modality = config["DicomModalities"]["seriesflow"]
        assert modality["AET"] == running.local("receiver", "SERIESFLOW_AE_TITLE")
        host, port = running.localizer.address(f"{modality['Host']}:{modality['Port']}").split(":")
        http_port = free_port()
        ((user, password),) = config["RegisteredUsers"].items()
        local = {
            **config,
            "DicomModalities": {"seriesflow": {**modality, "Host": host, "Port": int(port)}},
            # A private instance: own folders and port, loopback only. Orthanc 1.10 cannot
            # bind its DICOM listener to loopback, and a sender does not need one.
            "StorageDirectory": str(tmp_path / "orthanc" / "storage"),
            "IndexDirectory": str(tmp_path / "orthanc" / "index"),
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,
            "Plugins": [],
        }
        (tmp_path / "orthanc").mkdir()
        config_path = tmp_path / "orthanc" / "orthanc.json"
        config_path.write_text(json.dumps(local))
        orthanc = start_orthanc(binary, config_path)
        try:
            url, auth = f"http://127.0.0.1:{http_port}", f"{user}:{password}"
            wait_until("Orthanc", lambda: orthanc_answers(url, auth), [running.store])
            written = write_study(tmp_path / "pacs", [3])
            study_ids = {
                http_json(f"{url}/instances", f.read_bytes(), auth)["ParentStudy"]
                for f in written[0].files
            }
            body = json.dumps({"Resources": sorted(study_ids), "Synchronous": True}).encode()
            http_json(f"{url}/modalities/seriesflow/store", body, auth)
        finally:
            orthanc.terminate()
            orthanc.wait(timeout=30)
        wait_for_catalog(running, {written[0].series_instance_uid: 3})


def start_orthanc(binary: str, config_path: Path) -> subprocess.Popen[bytes]:
    log = open(config_path.parent / "orthanc.log", "wb")  # noqa: SIM115 (lives with the process)
    return subprocess.Popen(
        [binary, str(config_path)], stdout=log, stderr=log, cwd=config_path.parent
    )


def orthanc_answers(url: str, auth: str) -> bool:
    try:
        return "Name" in http_json(f"{url}/system", auth=auth)
    except OSError:
        return False


def test_concurrent_store_init_containers_converge_on_one_schema(
    database_url: str, tmp_path: Path
) -> None:
    """Every store replica migrates in its init container, at the same time on install.

    The migration takes an advisory lock, so the runs queue instead of racing: each one
    succeeds the first time, and the store starts on the schema.
    """
    source = chart_source()
    localizer = Localizer(source.hostnames, database_url, tmp_path / "data")
    provide_files(source, localizer)
    migrate = source.containers["migrate"]
    settings = localizer.env(migrate)
    runs = [
        subprocess.Popen(
            seriesflow_command(migrate.args),
            env=process_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        for _ in range(3)
    ]
    assert [run.wait(timeout=120) for run in runs] == [0, 0, 0]
    store_settings = localizer.env(source.containers["store"])
    store = start("store", source.containers["store"].args, store_settings, tmp_path)
    try:
        address = f"127.0.0.1:{store_settings['SERIESFLOW_GRPC_PORT']}"
        wait_until("store SERVING", lambda: grpc_health(address, "") == SERVING, [store])
    finally:
        assert stop(store) == 0
