"""What a platform team sets on the chart, as rendered: images from a registry mirror and
pinned digests, common labels, priority classes, extra environment and volumes per
component, TLS certificates (existing Secrets or cert-manager), the Bitnami-style external
database and the bundled database's password, disruption budgets, Ingresses, and the
ServiceMonitor/PrometheusRule selectors of kube-prometheus-stack.

Where a rendered setting names a file or a URL, the test hands the rendered environment to
the services' own configuration classes, so a path or URL the service would refuse fails
here rather than in a cluster.
"""

from __future__ import annotations

import base64
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from deploy_support import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    WORKLOAD_KINDS,
    Manifest,
    by_kind,
    container_env,
    containers,
    one,
    pod_labels,
    pod_spec,
    render,
    render_notes,
    run_helm_template,
)

from seriesflow import settings
from seriesflow.receiver.config import ReceiverConfig
from seriesflow.store.config import StoreConfig

VALUE_SETS = [pytest.param((), id="defaults")] + [
    pytest.param((path,), id=path.name.removesuffix("-values.yaml")) for path in CI_VALUES
]
STORE_DIGEST = "sha256:" + "0123456789abcdef" * 4
POSTGRES_DIGEST = "sha256:" + "fedcba9876543210" * 4


def ci(name: str) -> tuple[Path, ...]:
    return (CHART / "ci" / f"{name}-values.yaml",)


def container(objects: tuple[Manifest, ...], kind: str, suffix: str, name: str) -> Manifest:
    return next(c for c in containers(one(objects, kind, suffix)) if c["name"] == name)


def env_of(objects: tuple[Manifest, ...], kind: str, suffix: str, name: str) -> dict[str, Any]:
    return container_env(container(objects, kind, suffix, name), objects)


def plain(env: dict[str, Any]) -> dict[str, str]:
    """The literal settings, for the services' config classes. Token files are left out:
    the receiver reads its read token at start (the runtime tests give it the file)."""
    return {k: v for k, v in env.items() if isinstance(v, str) and not k.endswith("_TOKEN_FILE")}


def secret_data(objects: tuple[Manifest, ...], suffix: str) -> dict[str, str]:
    secret = one(objects, "Secret", suffix)
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def mounted_file(workload: Manifest, container_name: str, path: str) -> tuple[str, str]:
    """(Secret name, key) that `path` comes from in the container, via its volume mounts."""
    spec = pod_spec(workload)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    found = next(c for c in containers(workload) if c["name"] == container_name)
    for mount in found.get("volumeMounts", []):
        if posixpath.dirname(path) == mount["mountPath"]:
            secret = volumes[mount["name"]]["secret"]
            (item,) = [i for i in secret["items"] if i["path"] == posixpath.basename(path)]
            return secret["secretName"], item["key"]
    raise AssertionError(f"{container_name}: nothing mounted at {posixpath.dirname(path)}")


# Images --------------------------------------------------------------------------------


def images(objects: tuple[Manifest, ...]) -> set[str]:
    return {c["image"] for w in objects if w["kind"] in WORKLOAD_KINDS for c in containers(w)}


def test_images_default_to_the_app_version_and_the_postgres_tag() -> None:
    assert images(render()) == {"seriesflow:0.1.0", "postgres:16-bookworm"}


def test_a_digest_pins_each_image_and_registries_prefix_them() -> None:
    # Each image's registry wins over global.imageRegistry.
    assert images(render(ci("platform"))) == {
        f"registry.example.org/imaging/seriesflow@{STORE_DIGEST}",
        f"registry.example.org/library/postgres@{POSTGRES_DIGEST}",
    }
    mirrored = render(set_values=("global.imageRegistry=mirror.example.org/",))
    assert images(mirrored) == {
        "mirror.example.org/seriesflow:0.1.0",
        "mirror.example.org/postgres:16-bookworm",
    }


def test_pull_secrets_reach_every_pod_including_the_bundled_database() -> None:
    objects = render(ci("platform"))
    for workload in [o for o in objects if o["kind"] in WORKLOAD_KINDS]:
        assert pod_spec(workload)["imagePullSecrets"] == [{"name": "regcred"}], workload[
            "metadata"
        ]["name"]


# Labels and priority classes -------------------------------------------------------------


def test_common_labels_are_on_every_object_and_pod_and_never_in_selectors() -> None:
    objects = render(ci("platform"))
    expected = {"team": "imaging-platform", "cost-center": "radiology"}
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert expected.items() <= labels.items(), obj["metadata"]["name"]
        if obj["kind"] in WORKLOAD_KINDS:
            assert expected.items() <= pod_labels(obj).items()
        selector = obj.get("spec", {}).get("selector", {})
        selector = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
        assert not set(selector) & set(expected), f"{obj['metadata']['name']} selects by them"


def test_priority_class_names_per_component_with_a_chart_wide_default() -> None:
    objects = render(ci("platform"))
    classes = {
        w["metadata"]["name"]: pod_spec(w).get("priorityClassName")
        for w in objects
        if w["kind"] in WORKLOAD_KINDS
    }
    assert classes == {
        "sf-seriesflow-store": "imaging-critical",
        "sf-seriesflow-receiver": "imaging-ingest",
        "sf-seriesflow-postgresql": "imaging-database",
        "sf-seriesflow-test": "imaging-default",  # the chart-wide one
    }
    for workload in [o for o in render() if o["kind"] in WORKLOAD_KINDS]:
        assert "priorityClassName" not in pod_spec(workload)


# Extra environment and volumes ---------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_volume_mount_names_a_volume_of_its_pod(values: tuple[Path, ...]) -> None:
    for workload in [o for o in render(values) if o["kind"] in WORKLOAD_KINDS]:
        spec = pod_spec(workload)
        names = {v["name"] for v in spec.get("volumes", [])}
        names |= {
            t["metadata"]["name"] for t in workload.get("spec", {}).get("volumeClaimTemplates", [])
        }
        assert len(names) == len(spec.get("volumes", [])) + len(
            workload.get("spec", {}).get("volumeClaimTemplates", [])
        ), "duplicate volume names"
        for each in containers(workload):
            for mount in each.get("volumeMounts", []):
                assert mount["name"] in names, f"{workload['metadata']['name']}: {mount}"


def test_extra_env_env_from_volumes_and_mounts_reach_their_own_component_only() -> None:
    objects = render(ci("platform"))
    store = container(objects, "Deployment", "-store", "store")
    migrate = container(objects, "Deployment", "-store", "migrate")
    receiver = container(objects, "StatefulSet", "-receiver", "receiver")
    store_env = container_env(store, objects)
    assert store_env["TZ"] == "Europe/Berlin" and store_env["SERIESFLOW_SHUTDOWN_GRACE"] == "20"
    assert {"secretRef": {"name": "imaging-extra-secrets", "optional": True}} in store["envFrom"]
    assert {"name": "corporate-ca", "mountPath": "/etc/ssl/corporate", "readOnly": True} in (
        store["volumeMounts"]
    )
    receiver_env = container_env(receiver, objects)
    assert receiver_env["SERIESFLOW_MAX_ASSOCIATIONS"] == "64" and "TZ" not in receiver_env
    assert {"configMapRef": {"name": "imaging-proxy-settings"}} in receiver["envFrom"]
    assert [m for m in receiver["volumeMounts"] if m["name"] == "user-identities"]
    assert not [m for m in receiver["volumeMounts"] if m["name"] == "corporate-ca"]
    receiver_volumes = {
        v["name"] for v in pod_spec(one(objects, "StatefulSet", "-receiver"))["volumes"]
    }
    assert "user-identities" in receiver_volumes and "corporate-ca" not in receiver_volumes
    # The migrate init container: its own extras, in the store pod.
    migrate_env = container_env(migrate, objects)
    assert migrate_env["PGCONNECT_TIMEOUT"] == "15" and "TZ" not in migrate_env
    assert "PGCONNECT_TIMEOUT" not in store_env
    assert [m["mountPath"] for m in migrate["volumeMounts"] if m["name"] == "migrate-scratch"] == [
        "/var/tmp"
    ]
    store_volumes = {v["name"] for v in pod_spec(one(objects, "Deployment", "-store"))["volumes"]}
    assert {"corporate-ca", "migrate-scratch"} <= store_volumes


def test_migration_extras_go_to_the_hook_job_in_hook_mode() -> None:
    objects = render(
        ci("external-db-parts"),
        (
            "migrations.extraEnv[0].name=PGCONNECT_TIMEOUT",
            "migrations.extraEnv[0].value=15",
            "migrations.extraVolumes[0].name=scratch",
            "migrations.extraVolumes[0].emptyDir.sizeLimit=1Mi",
            "migrations.extraVolumeMounts[0].name=scratch",
            "migrations.extraVolumeMounts[0].mountPath=/var/tmp",
            "migrations.extraEnvFrom[0].secretRef.name=migrate-extra",
        ),
    )
    job = one(objects, "Job", "-migrate")
    (migrate,) = pod_spec(job)["containers"]
    assert container_env(migrate, objects)["PGCONNECT_TIMEOUT"] == "15"
    assert migrate["envFrom"] == [{"secretRef": {"name": "migrate-extra"}}]
    assert {"name": "scratch", "mountPath": "/var/tmp"} in migrate["volumeMounts"]
    assert "scratch" in {v["name"] for v in pod_spec(job)["volumes"]}
    store_pod = pod_spec(one(objects, "Deployment", "-store"))
    assert "scratch" not in {v["name"] for v in store_pod["volumes"]}


# Disruption budgets and Ingresses -------------------------------------------------------


def test_receivers_have_a_disruption_budget_of_their_own() -> None:
    default = one(render(), "PodDisruptionBudget", "-receiver")
    assert default["spec"]["maxUnavailable"] == 1
    receiver_pods = pod_labels(one(render(), "StatefulSet", "-receiver"))
    assert default["spec"]["selector"]["matchLabels"].items() <= receiver_pods.items()
    platform = one(render(ci("platform")), "PodDisruptionBudget", "-receiver")
    assert platform["spec"]["minAvailable"] == 2 and "maxUnavailable" not in platform["spec"]
    off = render(set_values=("receiver.podDisruptionBudget.enabled=false",))
    assert [p["metadata"]["name"] for p in by_kind(off, "PodDisruptionBudget")] == [
        "sf-seriesflow-store"
    ]


def test_ingresses_route_to_the_service_ports_they_are_for() -> None:
    assert not by_kind(render(), "Ingress")
    objects = render(ci("platform"))
    ingresses = {i["metadata"]["name"]: i for i in by_kind(objects, "Ingress")}
    expected = {
        "sf-seriesflow-store-grpc": ("seriesflow-grpc.example.org", "/", "store", "grpc"),
        "sf-seriesflow-store-http": ("seriesflow.example.org", "/", "store", "http"),
        "sf-seriesflow-receiver-stow": ("stow.example.org", "/studies", "receiver", "stow"),
    }
    assert set(ingresses) == set(expected)
    for name, (host, path, component, port) in expected.items():
        ingress = ingresses[name]
        assert ingress["spec"]["ingressClassName"] == "nginx"
        (rule,) = ingress["spec"]["rules"]
        (route,) = rule["http"]["paths"]
        assert (rule["host"], route["path"], route["pathType"]) == (host, path, "Prefix")
        backend = route["backend"]["service"]
        service = one(objects, "Service", backend["name"])
        assert service["metadata"]["name"] == f"sf-seriesflow-{component}"
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        assert backend["port"]["name"] == port
    assert ingresses["sf-seriesflow-store-grpc"]["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/backend-protocol": "GRPC"
    }
    assert ingresses["sf-seriesflow-store-grpc"]["spec"]["tls"] == [
        {"hosts": ["seriesflow-grpc.example.org"], "secretName": "seriesflow-grpc-ingress-tls"}
    ]


# TLS -------------------------------------------------------------------------------------


def test_tls_from_existing_secrets_points_each_service_at_its_mounted_files() -> None:
    objects = render(ci("tls-existing-secrets"))
    store_set = one(objects, "Deployment", "-store")
    receiver_set = one(objects, "StatefulSet", "-receiver")
    store = settings.load(StoreConfig, plain(env_of(objects, "Deployment", "-store", "store")))
    receiver = settings.load(
        ReceiverConfig, plain(env_of(objects, "StatefulSet", "-receiver", "receiver"))
    )
    expected_store = {
        store.grpc_tls_cert: ("seriesflow-store-tls", "tls.crt"),
        store.grpc_tls_key: ("seriesflow-store-tls", "tls.key"),
        store.grpc_tls_client_ca: ("seriesflow-store-tls", "ca.crt"),
    }
    for path, source in expected_store.items():
        assert path is not None
        assert mounted_file(store_set, "store", str(path)) == source
    expected_receiver = {
        receiver.store_tls_ca: ("seriesflow-receiver-tls", "ca.crt"),
        receiver.store_tls_cert: ("seriesflow-receiver-tls", "tls.crt"),
        receiver.store_tls_key: ("seriesflow-receiver-tls", "tls.key"),
        receiver.dicom_tls_cert: ("seriesflow-dicom-tls", "tls.crt"),
        receiver.dicom_tls_key: ("seriesflow-dicom-tls", "tls.key"),
    }
    for path, source in expected_receiver.items():
        assert path is not None
        assert mounted_file(receiver_set, "receiver", str(path)) == source
    # The migrate init container shares the store's ConfigMap: its settings must load too.
    settings.load(StoreConfig, plain(env_of(objects, "Deployment", "-store", "migrate")))


def test_without_mutual_tls_receivers_get_only_the_ca_and_the_store_asks_no_client_cert() -> None:
    objects = render(ci("tls-cert-manager"))
    store_env = env_of(objects, "Deployment", "-store", "store")
    receiver_env = env_of(objects, "StatefulSet", "-receiver", "receiver")
    assert "SERIESFLOW_GRPC_TLS_CLIENT_CA" not in store_env
    assert "SERIESFLOW_STORE_TLS_CERT" not in receiver_env
    receiver_set = one(objects, "StatefulSet", "-receiver")
    (volume,) = [v for v in pod_spec(receiver_set)["volumes"] if v["name"] == "store-tls"]
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    settings.load(ReceiverConfig, plain(receiver_env))
    settings.load(StoreConfig, plain(store_env))


def test_store_probes_leave_grpc_when_it_speaks_tls() -> None:
    # The kubelet's gRPC probes have no TLS: they would fail against a TLS port.
    objects = render(ci("tls-existing-secrets"))
    store = container(objects, "Deployment", "-store", "store")
    http_port = int(env_of(objects, "Deployment", "-store", "store")["SERIESFLOW_STORE_HTTP_PORT"])
    assert store["startupProbe"]["tcpSocket"] == {"port": "grpc"}
    assert store["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": http_port, "protocol": "TCP"} in store["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in store[probe]


def test_helm_test_pod_speaks_tls_to_the_store_and_the_receiver_when_they_do() -> None:
    objects = render(ci("tls-existing-secrets"))
    (pod,) = by_kind(objects, "Pod")
    health = pod_spec(pod)["containers"][0]
    assert health["command"][-1] == "/etc/seriesflow/tls/store-client"
    assert mounted_file(pod, "store-health", "/etc/seriesflow/tls/store-client/ca.crt") == (
        "seriesflow-receiver-tls",
        "ca.crt",
    )
    echo = pod_spec(pod)["initContainers"][0]
    assert "tls_args" in echo["command"][2]
    plaintext = pod_spec(by_kind(render(), "Pod")[0])
    assert plaintext["initContainers"][0]["args"][0] == "echo"
    assert len(plaintext["containers"][0]["command"]) == 4


def test_cert_manager_issues_the_certificates_the_pods_mount() -> None:
    objects = render(ci("tls-cert-manager"))
    certificates = {c["spec"]["secretName"]: c for c in by_kind(objects, "Certificate")}
    mounted = {
        v["secret"]["secretName"]
        for w in objects
        if w["kind"] in WORKLOAD_KINDS
        for v in pod_spec(w).get("volumes", [])
        if "secret" in v and "tls" in v["name"]
    }
    assert set(certificates) == mounted
    store_cert = certificates["sf-seriesflow-store-tls"]
    receiver_env = env_of(objects, "StatefulSet", "-receiver", "receiver")
    store_host = receiver_env["SERIESFLOW_STORE_ADDRESS"].rsplit(":", 1)[0]
    # The receivers verify the store by the host name they dial.
    assert store_host in store_cert["spec"]["dnsNames"]
    assert f"{store_host}.{NAMESPACE}.svc.cluster.local" in store_cert["spec"]["dnsNames"]
    assert "server auth" in store_cert["spec"]["usages"]
    dicom = certificates["sf-seriesflow-dicom-tls"]
    assert {"sf-seriesflow-receiver", "dicom.example.org"} <= set(dicom["spec"]["dnsNames"])
    for certificate in certificates.values():
        assert certificate["spec"]["issuerRef"] == {
            "name": "imaging-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }
        assert certificate["spec"]["privateKey"]["algorithm"] == "RSA"
        assert certificate["spec"]["duration"] == "720h"
    mutual = render(
        ci("tls-cert-manager"), ("tls.grpc.mutual=true", "tls.dicom.existingSecret=mine")
    )
    names = {c["spec"]["secretName"]: c for c in by_kind(mutual, "Certificate")}
    assert set(names) == {"sf-seriesflow-store-tls", "sf-seriesflow-receiver-grpc-tls"}
    assert names["sf-seriesflow-receiver-grpc-tls"]["spec"]["usages"][-1] == "client auth"
    assert not by_kind(render(ci("tls-existing-secrets")), "Certificate")


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (("tls.grpc.enabled=true",), "tls.grpc.store.existingSecret"),
        (("tls.dicom.enabled=true",), "tls.dicom.existingSecret"),
        (("tls.dicom.enabled=true", "tls.certManager.enabled=true"), "issuerRef.name"),
    ],
)
def test_tls_without_a_certificate_source_is_refused(
    assignments: tuple[str, ...], message: str
) -> None:
    result = run_helm_template(set_values=assignments)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("store.settings.grpc_auth=mtls", "store.settings.grpc_auth sets SERIESFLOW_GRPC_AUTH"),
        ("store.settings.grpc_port=1", "store.settings.grpc_port sets SERIESFLOW_GRPC_PORT"),
        ("receiver.settings.log_level=DEBUG", "receiver.settings.log_level sets SERIES"),
    ],
)
def test_a_setting_the_chart_derives_itself_is_refused_in_settings(
    assignment: str, message: str
) -> None:
    """A ConfigMap with a key twice is ambiguous: the chart names the value to use instead."""
    result = run_helm_template(set_values=(assignment,))
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_settings_the_chart_does_not_derive_reach_the_configmap() -> None:
    objects = render(set_values=("store.settings.db_pool_max_size=20",))
    store = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-store")
    )
    assert store["data"]["SERIESFLOW_DB_POOL_MAX_SIZE"] == "20"


# Databases -------------------------------------------------------------------------------


def test_external_database_parts_build_a_url_without_the_password_and_pass_it_apart() -> None:
    objects = render(ci("external-db-parts"))
    for kind, suffix, name in (("Deployment", "-store", "store"), ("Job", "-migrate", "migrate")):
        env = env_of(objects, kind, suffix, name)
        url = env["SERIESFLOW_DATABASE_URL"]
        assert isinstance(url, str)
        settings.load(StoreConfig, {"SERIESFLOW_DATABASE_URL": url})  # libpq's parser
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.username, parts.path) == (
            "db.example.internal",
            6432,
            "seriesflow_app",
            "/imaging",
        )
        assert parts.password is None
        assert parse_qs(parts.query) == {"sslmode": ["verify-full"]}
        # libpq reads PGPASSWORD when the URL has none: no escaping of the password.
        assert env["PGPASSWORD"] == {"secretKeyRef": {"name": "imaging-db", "key": "db-password"}}
    assert not [
        s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-database")
    ]


def test_external_database_parts_with_a_password_value_keep_it_in_the_charts_secret() -> None:
    objects = render(ci("external-db-host-password"))
    assert secret_data(objects, "-database") == {"password": "not-a-real-password"}
    env = env_of(objects, "Deployment", "-store", "store")
    assert env["PGPASSWORD"] == {
        "secretKeyRef": {"name": "sf-seriesflow-database", "key": "password"}
    }
    assert env["SERIESFLOW_DATABASE_URL"] == (
        "postgresql://seriesflow@10.20.30.40:5432/seriesflow?sslmode=require"
    )
    ipv6 = render(ci("external-db-host-password"), ("externalDatabase.host=fd00::5",))
    url = env_of(ipv6, "Deployment", "-store", "store")["SERIESFLOW_DATABASE_URL"]
    assert urlsplit(url).hostname == "fd00::5"
    settings.load(StoreConfig, {"SERIESFLOW_DATABASE_URL": url})


def test_bundled_postgresql_with_an_existing_secret_renders_no_password() -> None:
    objects = render(ci("bundled-postgresql-existing-secret"))
    assert not [
        s for s in by_kind(objects, "Secret") if s["metadata"]["name"].endswith("-database")
    ]
    reference = {"secretKeyRef": {"name": "seriesflow-pg", "key": "user-password"}}
    postgres = container(objects, "StatefulSet", "-postgresql", "postgresql")
    postgres_env = {e["name"]: e.get("valueFrom") for e in postgres["env"]}
    assert postgres_env["POSTGRES_PASSWORD"] == reference
    for name in ("store", "migrate"):
        env = env_of(objects, "Deployment", "-store", name)
        assert env["PGPASSWORD"] == reference
        url = urlsplit(env["SERIESFLOW_DATABASE_URL"])
        assert url.hostname == one(objects, "Service", "-postgresql")["metadata"]["name"]
        assert url.password is None and url.username == "seriesflow"


def test_bundled_password_is_the_same_on_every_render_and_unique_per_release() -> None:
    first = secret_data(render(), "-database")
    again = secret_data(render(set_values=("nameOverride=",)), "-database")
    assert first == again
    password = first["postgres-password"]
    assert len(password) == 32 and all(c in "0123456789abcdef" for c in password)
    other = secret_data(render(set_values=("fullnameOverride=other",)), "-database")
    assert other["postgres-password"] != password
    given = secret_data(render(set_values=("postgresql.auth.password=chosen",)), "-database")
    assert given["postgres-password"] == "chosen"
    # No render-time randomness left in the database password (lookup keeps a password an
    # older chart generated, on a cluster only).
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    define = helpers[helpers.index('define "seriesflow.postgresql.password"') :]
    define = define[: define.index("{{- end }}\n{{- end }}\n{{- end }}")]
    assert "rand" not in define


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (("postgresql.enabled=false", "externalDatabase.host=db"), "needs a password"),
        (
            ("postgresql.enabled=false", "externalDatabase.host=db", "externalDatabase.url=x"),
            "configure exactly one database",
        ),
        (
            (
                "postgresql.enabled=false",
                "externalDatabase.host=db",
                "externalDatabase.password=p",
                "externalDatabase.existingSecret=s",
            ),
            "not both",
        ),
        (
            ("postgresql.auth.password=p", "postgresql.auth.existingSecret=s"),
            "not both",
        ),
        (
            (
                "postgresql.enabled=false",
                "externalDatabase.host=db",
                "externalDatabase.password=p",
                "migrations.mode=hook",
            ),
            "migrations.mode=hook",
        ),
    ],
    ids=["host-without-password", "host-and-url", "two-passwords", "two-pg-passwords", "hook"],
)
def test_inconsistent_database_values_are_refused(
    assignments: tuple[str, ...], message: str
) -> None:
    result = run_helm_template(set_values=assignments)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# Monitoring selectors ------------------------------------------------------------------


def test_monitoring_objects_carry_the_release_label_kube_prometheus_stack_selects() -> None:
    on = ("metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        default = one(render(set_values=on), kind)
        assert default["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert "namespace" not in default["metadata"]
        unlabelled = one(render(set_values=(*on, "metrics.release=")), kind)
        assert "release" not in unlabelled["metadata"]["labels"]
        monitored = one(render(ci("monitoring")), kind)
        assert monitored["metadata"]["labels"]["release"] == "kps"
        assert monitored["metadata"]["namespace"] == "monitoring"
    override = one(
        render(set_values=(*on, "metrics.serviceMonitor.labels.release=mine")), "ServiceMonitor"
    )
    assert override["metadata"]["labels"]["release"] == "mine"


def _runbook_urls(rule: dict[str, Any]) -> dict[str, str]:
    return {
        r["alert"]: r["annotations"]["runbook_url"]
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    }


def test_a_runbook_base_url_makes_every_alert_link_absolute_keeping_its_anchor() -> None:
    relative = _runbook_urls(
        one(render(set_values=("metrics.prometheusRule.enabled=true",)), "PrometheusRule")
    )
    assert relative and all(u.startswith("docs/runbooks.md#") for u in relative.values())
    base = "https://git.example.org/imaging/seriesflow/-/blob/main/docs/runbooks.md"
    absolute = _runbook_urls(one(render(ci("monitoring")), "PrometheusRule"))
    assert absolute == {
        alert: base + url.removeprefix("docs/runbooks.md") for alert, url in relative.items()
    }
    refused = run_helm_template(set_values=("metrics.prometheusRule.runbookBaseURL=runbooks",))
    assert refused.returncode != 0 and "runbookBaseURL" in refused.stderr, refused.stderr


def test_service_monitor_endpoints_carry_relabelings_and_honor_labels() -> None:
    (endpoint,) = one(render(ci("monitoring")), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is False
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
    ]
    assert endpoint["metricRelabelings"][0]["action"] == "drop"


# Schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "assignment",
    [
        "image.digest=latest",
        "global.imageRegistry=has space",
        "externalDatabase.sslmode=maybe",
        "externalDatabase.port=0",
        "externalDatabase.existingSecret=Not_A_Name",
        "postgresql.auth.secretKeys.adminPasswordKey=x",
        "tls.certManager.issuerRef.kind=Vault",
        "tls.grpc.mutal=true",
        "store.extraEnv[0].value=no-name",
        "receiver.extraVolumeMounts[0].name=x",
        "store.ingress.grpc.enabeld=true",
        "receiver.ingress.stow.hosts[0].paths[0].path=no-slash",
        "metrics.serviceMonitor.honorLabels=maybe",
        "metrics.serviceMonitor.namespace=Bad_Namespace",
        "commonLabels.team=1",
    ],
)
def test_values_schema_rejects_bad_platform_values(assignment: str) -> None:
    result = run_helm_template(set_values=(assignment,))
    assert result.returncode != 0
    assert "schema" in result.stderr, result.stderr


def test_receiver_pdb_schema_refuses_both_bounds() -> None:
    result = run_helm_template(
        set_values=(
            "receiver.podDisruptionBudget.minAvailable=1",
            "receiver.podDisruptionBudget.maxUnavailable=1",
        )
    )
    assert result.returncode != 0 and "schema" in result.stderr


# NOTES ----------------------------------------------------------------------------------


def test_notes_show_grpcurl_with_the_receivers_certificates_when_the_store_speaks_tls(
    tmp_path: Path,
) -> None:
    notes = render_notes(ci("tls-existing-secrets"), tmp_path / "tls")
    assert "grpcurl -plaintext" not in notes
    assert (
        "grpcurl -cacert ca.crt -servername sf-seriesflow-store -cert tls.crt -key tls.key "
        "localhost:50051 list seriesflow.v1.SeriesStore"
    ) in notes
    assert "get secret seriesflow-receiver-tls -o jsonpath='{.data.ca\\.crt}'" in notes


def test_notes_warn_when_the_bundled_password_is_the_derived_one(tmp_path: Path) -> None:
    assert "password is derived" in render_notes((), tmp_path / "derived")
    secret = render_notes(ci("bundled-postgresql-existing-secret"), tmp_path / "secret")
    assert "password is derived" not in secret
    parts = render_notes(ci("external-db-parts"), tmp_path / "parts")
    assert "Database: external, db.example.internal:6432/imaging as seriesflow_app" in parts


# Coverage of the value sets ----------------------------------------------------------

# The values issue 13 added: each is set by at least one ci/*-values.yaml, so helm lint,
# the Kubernetes schemas and the tests above see it rendered.
PLATFORM_VALUES = [
    "clusterDomain",
    "commonLabels",
    "global.imageRegistry",
    "image.digest",
    "image.registry",
    "priorityClassName",
    "externalDatabase.database",
    "externalDatabase.existingSecretPasswordKey",
    "externalDatabase.host",
    "externalDatabase.password",
    "externalDatabase.port",
    "externalDatabase.sslmode",
    "externalDatabase.user",
    "metrics.prometheusRule.namespace",
    "metrics.release",
    "metrics.serviceMonitor.honorLabels",
    "metrics.serviceMonitor.metricRelabelings",
    "metrics.serviceMonitor.namespace",
    "metrics.serviceMonitor.relabelings",
    "migrations.extraEnv",
    "migrations.extraEnvFrom",
    "migrations.extraVolumeMounts",
    "migrations.extraVolumes",
    "migrations.priorityClassName",
    "postgresql.auth.existingSecret",
    "postgresql.auth.secretKeys.userPasswordKey",
    "postgresql.image.digest",
    "postgresql.image.registry",
    "postgresql.priorityClassName",
    "receiver.extraEnv",
    "receiver.extraEnvFrom",
    "receiver.extraVolumeMounts",
    "receiver.extraVolumes",
    "receiver.ingress.stow.annotations",
    "receiver.ingress.stow.className",
    "receiver.ingress.stow.enabled",
    "receiver.ingress.stow.hosts",
    "receiver.ingress.stow.tls",
    "receiver.podDisruptionBudget.enabled",
    "receiver.priorityClassName",
    "store.extraEnv",
    "store.extraEnvFrom",
    "store.extraVolumeMounts",
    "store.extraVolumes",
    "store.ingress.grpc.annotations",
    "store.ingress.grpc.className",
    "store.ingress.grpc.enabled",
    "store.ingress.grpc.hosts",
    "store.ingress.grpc.tls",
    "store.ingress.http.annotations",
    "store.ingress.http.className",
    "store.ingress.http.enabled",
    "store.ingress.http.hosts",
    "store.ingress.http.tls",
    "store.priorityClassName",
    "tls.certManager.duration",
    "tls.certManager.enabled",
    "tls.certManager.issuerRef.group",
    "tls.certManager.issuerRef.kind",
    "tls.certManager.issuerRef.name",
    "tls.certManager.privateKey.algorithm",
    "tls.certManager.privateKey.size",
    "tls.certManager.renewBefore",
    "tls.dicom.dnsNames",
    "tls.dicom.enabled",
    "tls.dicom.existingSecret",
    "tls.grpc.enabled",
    "tls.grpc.mutual",
    "tls.grpc.receiver.existingSecret",
    "tls.grpc.store.existingSecret",
]


def _paths(values: Any, prefix: str = "") -> set[str]:
    if isinstance(values, dict) and values:
        return {p for k, v in values.items() for p in _paths(v, f"{prefix}{k}.")} | {
            prefix.removesuffix(".")
        }
    return {prefix.removesuffix(".")}


def test_every_platform_value_is_set_by_a_ci_value_set() -> None:
    set_somewhere: set[str] = set()
    for path in CI_VALUES:
        set_somewhere |= _paths(yaml.safe_load(path.read_text()))
    defaults = _paths(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert set(PLATFORM_VALUES) <= defaults, set(PLATFORM_VALUES) - defaults
    assert set(PLATFORM_VALUES) <= set_somewhere, set(PLATFORM_VALUES) - set_somewhere
