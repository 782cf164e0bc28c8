"""The Helm chart, checked by helm itself and by the Kubernetes schemas.

Every value set in deploy/helm/seriesflow/ci/ (the chart-testing convention) is linted with
`helm lint --strict`, rendered with `helm template`, and every rendered object validated
against the Kubernetes JSON schemas of two minor versions. The rest asserts what a schema
cannot: security context, probes, selectors, hook ordering, monitoring objects.
"""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import warnings
from pathlib import Path
from urllib.parse import urlsplit

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
    RELEASE,
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

from receiver.config import ReceiverConfig
from seriesflow import settings
from store.config import StoreConfig

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
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "dicom"
    if expected_type == "NodePort":
        assert port["nodePort"] == 30667
    if expected_type == "LoadBalancer":
        assert port["port"] == 104
        assert service["spec"]["externalTrafficPolicy"] == "Local"
        assert service["spec"]["loadBalancerSourceRanges"] == ["10.20.0.0/16"]
    if expected_type == "ClusterIP":
        assert "nodePort" not in port and "externalTrafficPolicy" not in service["spec"]


def store_init_containers(objects: tuple[Manifest, ...]) -> list[Manifest]:
    return list(pod_spec(one(objects, "Deployment", "-store")).get("initContainers", []))


def test_init_container_mode_waits_for_the_bundled_database_then_migrates_before_the_store() -> (
    None
):
    objects = render()
    assert not by_kind(objects, "Job"), "initContainer mode renders no migration Job"
    init = store_init_containers(objects)
    assert [c["name"] for c in init] == ["wait-for-database", "migrate"]
    postgresql_service = one(objects, "Service", "-postgresql")
    assert postgresql_service["metadata"]["name"] in init[0]["command"][-1] or any(
        e.get("value") == postgresql_service["metadata"]["name"] for e in init[0].get("env", [])
    )
    migrate = init[1]
    store = pod_spec(one(objects, "Deployment", "-store"))["containers"][0]
    assert migrate["args"] == ["migrate"] and store["args"] == ["store"]
    assert migrate["image"] == store["image"]
    # Same database and settings as the store it prepares.
    assert container_env(migrate, objects) == container_env(store, objects)


def test_init_container_mode_with_an_external_database_does_not_wait_for_a_bundled_one() -> None:
    objects = render(ci("external-db-url"))
    assert [c["name"] for c in store_init_containers(objects)] == ["migrate"]
    assert not [o for o in objects if o["metadata"]["name"].endswith("-postgresql")]


def test_hook_mode_migrates_once_before_install_and_upgrade_with_pre_existing_objects_only() -> (
    None
):
    objects = render(ci("external-db-existing-secret"))
    assert store_init_containers(objects) == [], "hook mode: the store does not migrate itself"
    job = one(objects, "Job", "-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) < 0
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation",
        "hook-succeeded",
    }
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["args"] == ["migrate"]
    # A pre-install hook runs before the release's objects exist: it may only reference
    # the user's Secret, never the chart's ConfigMaps, Secrets or ServiceAccount.
    assert "serviceAccountName" not in spec
    assert "envFrom" not in container
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_refs == {"seriesflow-db"}
    assert not by_kind(objects, "Secret"), "the URL comes from the existing Secret only"
    release_names = {o["metadata"]["name"] for o in objects if o is not job}
    assert not secret_refs & release_names


def test_hook_mode_is_refused_where_a_pre_install_hook_cannot_reach_the_database() -> None:
    result = run_helm_template(set_values=("migrations.mode=hook",))
    assert result.returncode != 0
    assert "migrations.mode=hook" in result.stderr and "existingSecret" in result.stderr


@pytest.mark.parametrize(
    "assignments",
    [
        ("postgresql.enabled=false",),
        ("externalDatabase.url=postgresql://a@b/c",),
        (
            "postgresql.enabled=false",
            "externalDatabase.url=postgresql://a@b/c",
            "externalDatabase.existingSecret=x",
        ),
    ],
    ids=["none", "bundled-and-url", "url-and-secret"],
)
def test_exactly_one_database_source_is_required(assignments: tuple[str, ...]) -> None:
    result = run_helm_template(set_values=assignments)
    assert result.returncode != 0
    assert "configure exactly one database" in result.stderr


@pytest.mark.parametrize(
    "assignment",
    [
        "receiver.service.type=Ingress",
        "receiver.servce.type=NodePort",
        "receiver.aeTitle=THIS_AE_TITLE_IS_TOO_LONG",
        "migrations.mode=job",
        "store.grpcPort=70000",
    ],
)
def test_values_schema_rejects_bad_values(assignment: str) -> None:
    result = run_helm_template(set_values=(assignment,))
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr


def test_bundled_database_url_points_at_the_bundled_postgresql_with_its_password() -> None:
    objects = render(set_values=("postgresql.auth.password=p@ss:w/rd",))
    secret = one(objects, "Secret", "-database")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    url = urlsplit(data["database-url"])
    assert url.hostname == one(objects, "Service", "-postgresql")["metadata"]["name"]
    assert url.port == 5432 and url.path == "/seriesflow"
    assert data["postgres-password"] == "p@ss:w/rd"
    # Reserved characters are escaped, so libpq reads the same password back.
    assert url.password is not None and url.password != "p@ss:w/rd"
    from urllib.parse import unquote

    assert unquote(url.password) == "p@ss:w/rd"
    postgres = pod_spec(one(objects, "StatefulSet", "-postgresql"))["containers"][0]
    password_ref = next(e for e in postgres["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert password_ref["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "postgres-password",
    }


def test_bundled_postgresql_uses_the_official_image_with_a_claim() -> None:
    statefulset = one(render(), "StatefulSet", "-postgresql")
    container = pod_spec(statefulset)["containers"][0]
    assert container["image"].startswith("postgres:")
    assert statefulset["spec"]["replicas"] == 1
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PGDATA"].startswith(mounts[claim] + "/")


def test_store_has_a_disruption_budget_and_optional_autoscaler() -> None:
    default = render()
    assert one(default, "PodDisruptionBudget", "-store")["spec"]["maxUnavailable"] == 1
    assert not by_kind(default, "HorizontalPodAutoscaler")
    assert one(default, "Deployment", "-store")["spec"]["replicas"] == 2
    scaled = render(ci("monitoring"))
    hpa = one(scaled, "HorizontalPodAutoscaler", "-store")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert one(render(ci("external-db-existing-secret")), "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": one(default, "PodDisruptionBudget")["spec"]["selector"],
    }


def test_monitoring_objects_are_off_by_default_and_on_in_the_monitoring_set() -> None:
    default_kinds = {o["kind"] for o in render()}
    assert not default_kinds & CRD_KINDS
    assert not [
        o for o in by_kind(render(), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")
    ]
    monitored = render(ci("monitoring"))
    assert {"ServiceMonitor", "PrometheusRule"} <= {o["kind"] for o in monitored}


def test_service_monitor_scrapes_both_metrics_services_under_the_alert_job_names() -> None:
    objects = render(ci("monitoring"))
    monitor = one(objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in by_kind(objects, "Service") if matches(selector, s["metadata"]["labels"])]
    job_label = monitor["spec"]["jobLabel"]
    jobs = {s["metadata"]["labels"][job_label] for s in scraped}
    assert jobs == {"seriesflow-store", "seriesflow-receiver"}
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert jobs <= {c["job_name"] for c in prometheus["scrape_configs"]}
    for job in jobs:
        assert f'job="{job}"' in alerts
    for service in scraped:
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_carries_the_canonical_alert_rules() -> None:
    rule = one(render(ci("monitoring")), "PrometheusRule")
    canonical = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == canonical


def test_dashboard_configmap_has_the_grafana_label_and_the_canonical_dashboard() -> None:
    objects = render(ci("monitoring"))
    configmap = one(objects, "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == NAMESPACE
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "seriesflow"}
    canonical = (ROOT / "deploy" / "grafana" / "dashboards" / "seriesflow.json").read_text()
    assert configmap["data"] == {"seriesflow.json": canonical}


def test_network_policies_admit_exactly_the_traffic_each_component_serves() -> None:
    objects = render(ci("networkpolicy"))
    policies = {p["metadata"]["name"]: p for p in by_kind(objects, "NetworkPolicy")}
    prefix = f"{RELEASE}-seriesflow"
    assert set(policies) == {f"{prefix}-store", f"{prefix}-receiver", f"{prefix}-postgresql"}
    receiver_pods = pod_labels(one(objects, "StatefulSet", "-receiver"))
    store_pods = pod_labels(one(objects, "Deployment", "-store"))

    def rule_for(policy: str, port: str) -> Manifest:
        rules = policies[f"{prefix}-{policy}"]["spec"]["ingress"]
        return next(r for r in rules if r["ports"][0]["port"] == port)

    grpc_from = rule_for("store", "grpc")["from"]
    assert any(
        matches(p.get("podSelector", {}).get("matchLabels", {"x": "y"}), receiver_pods)
        for p in grpc_from
    )
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "reporting"}}
    } in grpc_from
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in rule_for("receiver", "dicom")["from"]
    for policy in ("store", "receiver"):
        assert rule_for(policy, "http-metrics")["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
    (db_peer,) = rule_for("postgresql", "postgresql")["from"]
    assert matches(db_peer["podSelector"]["matchLabels"], store_pods)
    assert not matches(db_peer["podSelector"]["matchLabels"], receiver_pods)
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_helm_test_pod_echoes_the_receiver_and_checks_the_store_health() -> None:
    objects = render()
    (pod,) = by_kind(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod_spec(pod)
    echo = spec["initContainers"][0]["args"]
    receiver_service = one(objects, "Service", "-receiver")
    assert echo[0] == "echo"
    assert f"--host={receiver_service['metadata']['name']}" in echo
    assert f"--dicom-port={receiver_service['spec']['ports'][0]['port']}" in echo
    health = spec["containers"][0]["command"]
    assert health[-1] == f"{one(objects, 'Service', '-store')['metadata']['name']}:50051"


def render_notes(values: tuple[Path, ...], tmp_path: Path) -> str:
    """NOTES.txt as `helm install` would print it (helm template leaves notes out)."""
    import shutil

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + notes + "\n{{- end }}\n"
    )
    (chart / "templates" / "notes-under-test.yaml").write_text(
        'notes: {{ include "notes-under-test" . | toJson }}\n'
    )
    result = run_helm_template(
        values, chart=chart, extra=("--show-only", "templates/notes-under-test.yaml")
    )
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["notes"])


@pytest.mark.parametrize(
    ("values", "address_hint"),
    [
        ((), "port-forward service/sf-seriesflow-receiver 6667:6667"),
        (ci("bundled-postgresql"), 'jsonpath="{.spec.ports[0].nodePort}"'),
        (ci("loadbalancer"), "storescu -aec STORESCP +sd +r $RECEIVER_IP 104"),
    ],
    ids=["clusterip", "nodeport", "loadbalancer"],
)
def test_notes_tell_how_to_send_dicom_and_query_with_grpcurl(
    values: tuple[Path, ...], address_hint: str, tmp_path: Path
) -> None:
    notes = render_notes(values, tmp_path)
    assert address_hint in notes
    assert "storescu -aec STORESCP" in notes
    assert "grpcurl -plaintext" in notes and "seriesflow.v1.SeriesStore/ListStudies" in notes
    assert "port-forward service/sf-seriesflow-store 50051:50051" in notes


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
