"""The chart's features, as rendered: migrations and their hook ordering, the database
configuration, the values schema, monitoring objects, NetworkPolicies, helm test and NOTES.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_support import (
    CHART,
    CRD_KINDS,
    NAMESPACE,
    RELEASE,
    Manifest,
    by_kind,
    container_env,
    matches,
    one,
    pod_labels,
    pod_spec,
    render,
    render_notes,
    run_helm_template,
)

ROOT = CHART.parents[2]


def ci(name: str) -> tuple[Path, ...]:
    return (CHART / "ci" / f"{name}-values.yaml",)


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
    database_secrets = [s for s in by_kind(objects, "Secret") if "database-url" in s["data"]]
    assert not database_secrets, "the URL comes from the existing Secret only"
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
        "grpcAuth.enabled=maybe",
        "grpcAuth.existingSecret=Not_A_Name",
        "grpcAuth.token=abc",
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
    assert one(render(ci("external-db-existing-secret")), "PodDisruptionBudget", "-store")[
        "spec"
    ] == {
        "minAvailable": 2,
        "selector": one(default, "PodDisruptionBudget", "-store")["spec"]["selector"],
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
        # The rules match jobs by regex (compose and ServiceMonitor name them alike).
        assert f'job=~".*{job}.*"' in alerts
    for service in scraped:
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The monitor may live in the monitoring namespace; it scrapes the release's.
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert monitor["metadata"]["namespace"] == "monitoring"


def test_prometheus_rule_carries_the_canonical_alert_rules() -> None:
    # Without metrics.prometheusRule.runbookBaseURL (the ci set has one: its own test).
    rule = one(render(set_values=("metrics.prometheusRule.enabled=true",)), "PrometheusRule")
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


AUTH_FOLDER = "/etc/seriesflow/grpc-auth"


def _auth_volume(workload: Manifest) -> tuple[Manifest, Manifest]:
    """(the grpc-auth volume, its mount in the workload's main container)."""
    spec = pod_spec(workload)
    (volume,) = [v for v in spec["volumes"] if v["name"] == "grpc-auth"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "grpc-auth"]
    return volume, mount


def test_grpc_auth_is_on_by_default_with_generated_tokens_each_pod_mounting_what_it_needs() -> None:
    objects = render()
    secret = one(objects, "Secret", "-grpc-auth")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    tokens = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(tokens) == {"write-tokens", "read-tokens"}
    assert all(len(t) == 48 and t.isalnum() for t in tokens.values())
    assert tokens["write-tokens"] != tokens["read-tokens"]
    assert render(set_values=("logLevel=INFO",)) != objects  # a new render, new random tokens

    store_deployment = one(objects, "Deployment", "-store")
    store = pod_spec(store_deployment)["containers"][0]
    store_env = container_env(store, objects)
    assert store_env["SERIESFLOW_GRPC_AUTH"] == "token"
    assert store_env["SERIESFLOW_GRPC_WRITE_TOKENS_FILE"] == f"{AUTH_FOLDER}/write-tokens"
    assert store_env["SERIESFLOW_GRPC_READ_TOKENS_FILE"] == f"{AUTH_FOLDER}/read-tokens"
    volume, mount = _auth_volume(store_deployment)
    assert mount == {"name": "grpc-auth", "mountPath": AUTH_FOLDER, "readOnly": True}
    assert "subPath" not in mount, "a subPath mount would never see a rotated Secret"
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert {i["key"] for i in volume["secret"]["items"]} == {"write-tokens", "read-tokens"}

    receiver_set = one(objects, "StatefulSet", "-receiver")
    receiver = pod_spec(receiver_set)["containers"][0]
    receiver_env = container_env(receiver, objects)
    assert receiver_env["SERIESFLOW_STORE_TOKEN_FILE"] == f"{AUTH_FOLDER}/write-tokens"
    assert receiver_env["SERIESFLOW_STORE_READ_TOKEN_FILE"] == f"{AUTH_FOLDER}/read-tokens"
    volume, mount = _auth_volume(receiver_set)
    assert mount["readOnly"] is True and mount["mountPath"] == AUTH_FOLDER
    # A receiver writes, and answers C-FIND through the store's query API with the read
    # token, which it reads at start: both files must be there.
    assert volume["secret"]["items"] == [
        {"key": "write-tokens", "path": "write-tokens"},
        {"key": "read-tokens", "path": "read-tokens"},
    ]


def test_grpc_auth_with_an_existing_secret_mounts_it_and_renders_no_secret() -> None:
    objects = render(ci("grpc-auth-existing-secret"))
    assert not [s for s in by_kind(objects, "Secret") if "grpc-auth" in s["metadata"]["name"]]
    for workload in (
        one(objects, "Deployment", "-store"),
        one(objects, "StatefulSet", "-receiver"),
    ):
        volume, _ = _auth_volume(workload)
        assert volume["secret"]["secretName"] == "seriesflow-grpc-tokens"


def test_grpc_auth_can_be_turned_off() -> None:
    objects = render(set_values=("grpcAuth.enabled=false",))
    assert not [s for s in by_kind(objects, "Secret") if "grpc-auth" in s["metadata"]["name"]]
    store = pod_spec(one(objects, "Deployment", "-store"))
    assert container_env(store["containers"][0], objects)["SERIESFLOW_GRPC_AUTH"] == "none"
    assert all(v["name"] != "grpc-auth" for v in store["volumes"])
    receiver = pod_spec(one(objects, "StatefulSet", "-receiver"))["containers"][0]
    assert "SERIESFLOW_STORE_TOKEN_FILE" not in container_env(receiver, objects)


def test_the_grpc_auth_secret_keeps_the_tokens_a_cluster_already_holds() -> None:
    # `lookup` needs a cluster, which helm template has not: read the template instead.
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    define = helpers[helpers.index('define "seriesflow.grpcAuthToken"') :]
    define = define[: define.index("{{- end }}\n{{- end }}")]
    assert 'lookup "v1" "Secret" .root.Release.Namespace' in define
    assert "b64dec" in define and "randAlphaNum 48" in define
    assert define.index("lookup") < define.index("randAlphaNum")


def test_notes_show_grpcurl_with_the_read_token_when_auth_is_on(tmp_path: Path) -> None:
    notes = render_notes((), tmp_path / "on")
    assert "get secret sf-seriesflow-grpc-auth -o jsonpath='{.data.read-tokens}'" in notes
    assert '-H "authorization: Bearer $TOKEN"' in notes
    assert "grpcurl -plaintext localhost:50051 list seriesflow.v1.SeriesStore" in notes
    off = render_notes(ci("grpc-auth-existing-secret"), tmp_path / "existing")
    assert "get secret seriesflow-grpc-tokens" in off
