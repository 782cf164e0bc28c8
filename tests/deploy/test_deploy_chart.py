"""The Helm chart, checked by helm itself and by the Kubernetes schemas.

Every value set in deploy/helm/seriesflow/ci/ (the chart-testing convention) is linted with
`helm lint --strict`, rendered with `helm template`, and every rendered object validated
against the Kubernetes JSON schemas of two minor versions. The rest asserts what a schema
cannot: security context, probes, selectors, hook ordering, monitoring objects.
"""

from __future__ import annotations

import dataclasses
import subprocess
import warnings
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from crd_schemas import BY_KIND as CRD_SCHEMAS
from deploy_support import (
    CHART,
    CI_VALUES,
    CRD_KINDS,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    WORKLOAD_KINDS,
    Manifest,
    by_kind,
    container_env,
    containers,
    helm,
    matches,
    one,
    pod_labels,
    pod_spec,
    render,
    run_helm_template,
)

from seriesflow import settings
from seriesflow.receiver.config import ReceiverConfig
from seriesflow.store.config import StoreConfig

ROOT = CHART.parents[2]
VALUE_SETS = [pytest.param((), id="defaults")] + [
    pytest.param((path,), id=path.name.removesuffix("-values.yaml")) for path in CI_VALUES
]


def ci(name: str) -> tuple[Path, ...]:
    return (CHART / "ci" / f"{name}-values.yaml",)


def test_ci_value_sets_cover_the_required_scenarios() -> None:
    names = {path.name for path in CI_VALUES}
    assert {
        "bundled-postgresql-values.yaml",
        "external-db-existing-secret-values.yaml",
        "monitoring-values.yaml",
        "networkpolicy-values.yaml",
        "loadbalancer-values.yaml",
        # What a platform team adopts (issue 13): each new value appears in one of these.
        "platform-values.yaml",
        "tls-existing-secrets-values.yaml",
        "tls-cert-manager-values.yaml",
        "external-db-parts-values.yaml",
        "external-db-host-password-values.yaml",
        "bundled-postgresql-existing-secret-values.yaml",
    } <= names


@pytest.mark.parametrize("values", VALUE_SETS)
def test_chart_passes_helm_lint_strict(values: tuple[Path, ...]) -> None:
    command = [helm(), "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for path in values:
        command += ["--values", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_rendered_object_is_valid_for_the_kubernetes_version(
    values: tuple[Path, ...], kube_version: str
) -> None:
    objects = render(values, kube_version=kube_version)
    assert objects, "the chart rendered nothing"
    skipped = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CRD_KINDS:
            # Not a built-in kind: validated against our own schema of the operator's CRD.
            skipped.append(name)
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name} is invalid for Kubernetes {kube_version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(
                f"{name}: no Kubernetes schema ({exc.message}); only {CRD_KINDS} may lack one"
            )
    if skipped:
        warnings.warn(
            f"kubernetes-validate skipped {skipped}: CRD kinds, checked against "
            "tests/deploy/crd_schemas.py instead",
            stacklevel=1,
        )


def test_crd_schemas_reject_a_misspelt_field() -> None:
    monitor = one(render(ci("monitoring")), "ServiceMonitor")
    broken = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CRD_SCHEMAS["ServiceMonitor"])


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_container_runs_non_root_read_only_without_privileges(
    values: tuple[Path, ...],
) -> None:
    objects = render(values)
    checked = 0
    for workload in [o for o in objects if o["kind"] in WORKLOAD_KINDS]:
        spec = pod_spec(workload)
        pod_context = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
            context = container.get("securityContext", {})
            effective = {**pod_context, **context}
            assert effective.get("runAsNonRoot") is True, where
            assert isinstance(effective.get("runAsUser"), int) and effective["runAsUser"] > 0, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert "add" not in context.get("capabilities", {}), where
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            # A read-only root filesystem needs a writable /tmp (Python, libpq, grpc use it).
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{where}: /tmp is not a writable emptyDir"
            if workload["kind"] != "Pod":
                resources = container.get("resources", {})
                assert resources.get("requests", {}).get("memory"), f"{where}: no memory request"
                assert resources.get("limits", {}).get("memory"), f"{where}: no memory limit"
            checked += 1
    assert checked >= 3


RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_pods_meet_the_restricted_pod_security_standard(values: tuple[Path, ...]) -> None:
    # What the "restricted" Pod Security Standard checks beyond the container contexts
    # above, so the chart installs into namespaces that enforce it.
    for workload in [o for o in render(values) if o["kind"] in WORKLOAD_KINDS]:
        spec = pod_spec(workload)
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        for host_field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host_field), f"{name}: {host_field}"
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{name}: volume {volume}"
        for container in containers(workload):
            context = container.get("securityContext", {})
            assert not context.get("privileged"), name
            assert set(context.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}
            assert all("hostPort" not in p for p in container.get("ports", [])), name


def test_seriesflow_pods_run_as_the_images_numeric_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile
    for workload in by_kind(render(), "Deployment") + by_kind(render(), "StatefulSet"):
        if workload["metadata"]["name"].endswith("-postgresql"):
            continue
        context = pod_spec(workload)["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (
            10001,
            10001,
            10001,
        )


def container_port(container: Manifest, name: str) -> int:
    for port in container.get("ports", []):
        if port["name"] == name:
            return int(port["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {name}")


def test_store_probes_are_native_grpc_health_checks_on_the_grpc_port() -> None:
    store = one(render(), "Deployment", "-store")
    container = next(c for c in pod_spec(store)["containers"] if c["name"] == "store")
    grpc_port = container_port(container, "grpc")
    env = container_env(container, render())
    assert int(env["SERIESFLOW_GRPC_PORT"]) == grpc_port
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    # Readiness asks about the SeriesStore service: NOT_SERVING while PostgreSQL is down.
    assert container["readinessProbe"]["grpc"]["service"] == "seriesflow.v1.SeriesStore"
    # Liveness must not follow the database, or an outage restarts every store.
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert "grpc" not in container["livenessProbe"]
    assert (
        container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
        >= 60
    ), "the store gets at least a minute to start"


def test_receiver_probes_use_livez_and_readyz_on_its_metrics_port() -> None:
    receiver = one(render(), "StatefulSet", "-receiver")
    container = pod_spec(receiver)["containers"][0]
    env = container_env(container, render())
    assert container_port(container, "http-metrics") == int(env["SERIESFLOW_RECEIVER_METRICS_PORT"])
    assert container_port(container, "dicom") == int(env["SERIESFLOW_DICOM_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http-metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"


@pytest.mark.parametrize("values", VALUE_SETS)
def test_selectors_match_their_own_pods_and_only_those(values: tuple[Path, ...]) -> None:
    objects = render(values)
    workloads = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        assert matches(selector, pod_labels(workload)), workload["metadata"]["name"]
        others = [w for w in workloads if w is not workload]
        assert not any(matches(selector, pod_labels(w)) for w in others), (
            f"{workload['metadata']['name']} selects another workload's pods"
        )
    for service in by_kind(objects, "Service"):
        selected = [w for w in workloads if matches(service["spec"]["selector"], pod_labels(w))]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)}"
        ports = {p["name"] for c in pod_spec(selected[0])["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port}"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind(objects, kind):
            selector = (
                obj["spec"]["selector"]
                if kind == "PodDisruptionBudget"
                else obj["spec"]["podSelector"]
            )["matchLabels"]
            assert [w for w in workloads if matches(selector, pod_labels(w))], obj["metadata"][
                "name"
            ]
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert one(objects, target["kind"], target["name"])
        assert "replicas" not in one(objects, target["kind"], target["name"])["spec"], (
            "with an HPA the Deployment must not pin replicas (helm upgrades would reset them)"
        )
    for statefulset in by_kind(objects, "StatefulSet"):
        governing = one(objects, "Service", statefulset["spec"]["serviceName"])
        assert governing["metadata"]["name"] == statefulset["spec"]["serviceName"]


def test_receiver_keeps_its_spool_on_a_volume_of_its_own_and_is_named_by_its_pod() -> None:
    objects = render()
    receiver = one(objects, "StatefulSet", "-receiver")
    container = pod_spec(receiver)["containers"][0]
    env = container_env(container, objects)
    claims = {t["metadata"]["name"] for t in receiver["spec"]["volumeClaimTemplates"]}
    spool_mount = next(m for m in container["volumeMounts"] if m["name"] in claims)
    assert spool_mount["mountPath"] == env["SERIESFLOW_DATA_DIR"]
    assert env["SERIESFLOW_RECEIVER_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert receiver["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    headless = one(objects, "Service", "-receiver-headless")
    assert headless["spec"]["clusterIP"] == "None"
    store_service = one(objects, "Service", "-store")
    host, port = env["SERIESFLOW_STORE_ADDRESS"].rsplit(":", 1)
    assert host == store_service["metadata"]["name"]
    assert int(port) in {p["port"] for p in store_service["spec"]["ports"] if p["name"] == "grpc"}


@pytest.mark.parametrize(
    ("values", "expected_type"),
    [
        ((), "ClusterIP"),
        (ci("bundled-postgresql"), "NodePort"),
        (ci("loadbalancer"), "LoadBalancer"),
    ],
)
def test_receiver_dicom_service_type_follows_values(
    values: tuple[Path, ...], expected_type: str
) -> None:
    service = one(render(values), "Service", "-receiver")
    assert service["spec"]["type"] == expected_type
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"dicom", "stow"}  # DICOM, and STOW-RS beside it
    port = ports["dicom"]
    assert port["targetPort"] == "dicom" and ports["stow"]["targetPort"] == "stow"
    if expected_type == "NodePort":
        assert port["nodePort"] == 30667
    if expected_type == "LoadBalancer":
        assert port["port"] == 104
        assert service["spec"]["externalTrafficPolicy"] == "Local"
        assert service["spec"]["loadBalancerSourceRanges"] == ["10.20.0.0/16"]
    if expected_type == "ClusterIP":
        assert "nodePort" not in port and "externalTrafficPolicy" not in service["spec"]


def settings_read_by(container_args: list[str]) -> set[str]:
    """SERIESFLOW_* variables the command's configuration class reads."""
    config_class = ReceiverConfig if container_args[0] == "receiver" else StoreConfig
    return {settings.env_name(f.name) for f in dataclasses.fields(config_class)}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_variable_the_chart_sets_is_a_setting_the_service_reads(
    values: tuple[Path, ...],
) -> None:
    # Unknown SERIESFLOW_* variables are ignored at run time, so a misspelt one in the chart
    # (or in store.settings / receiver.settings) would silently do nothing.
    objects = render(values)
    checked = 0
    for workload in [o for o in objects if o["kind"] in {"Deployment", "StatefulSet", "Job"}]:
        for container in containers(workload):
            args = container.get("args")
            if not args or args[0] not in {"store", "receiver", "migrate"}:
                continue
            given = {k for k in container_env(container, objects) if k.startswith("SERIESFLOW_")}
            unknown = given - settings_read_by(args)
            assert not unknown, f"{container['name']} gets {unknown}, which it does not read"
            checked += 1
    assert checked >= 2


def test_every_variable_compose_sets_is_a_setting_the_service_reads() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("migrate", "store", "receiver"):
        service = compose["services"][name]
        given = {k for k in service["environment"] if k.startswith("SERIESFLOW_")}
        unknown = given - settings_read_by(service["command"])
        assert not unknown, f"compose {name} gets {unknown}, which it does not read"


def test_chart_refuses_clusters_older_than_its_tested_minimum() -> None:
    # Native gRPC probes are GA from 1.27: the oldest version the objects are validated for.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    oldest = KUBERNETES_VERSIONS[0].rsplit(".", 1)[0]
    assert chart["kubeVersion"] == f">={oldest}.0-0"
    older = run_helm_template(kube_version="1.26.9")
    assert older.returncode != 0 and "kubeVersion" in older.stderr
