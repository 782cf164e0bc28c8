"""Pods roll exactly when their own configuration changes.

Kubernetes replaces a workload's pods when its pod template changes; the chart puts
checksum/config and checksum/secret annotations on each template so that a change of the
ConfigMap or Secret a component reads changes its template too. Each case renders the chart
with `helm template` twice - base values, then one variation - and compares per component
(store Deployment with its migrate init container, receiver StatefulSet, migrate hook Job):
the checksums of the components that read the varied setting must change, and every other
component's whole pod template must stay byte-for-byte the same, so it does not roll.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_support import CHART, CI_VALUES, Manifest, by_kind, render

WORKLOADS = {
    "store": ("Deployment", "-store"),
    "receiver": ("StatefulSet", "-receiver"),
    "migrate": ("Job", "-migrate"),
}


def ci(name: str) -> tuple[Path, ...]:
    return (CHART / "ci" / f"{name}-values.yaml",)


def templates(objects: tuple[Manifest, ...]) -> dict[str, dict[str, Any]]:
    """Each component's pod template (components the values do not render are absent)."""
    found = {}
    for component, (kind, suffix) in WORKLOADS.items():
        for workload in by_kind(objects, kind):
            if workload["metadata"]["name"].endswith(suffix):
                found[component] = workload["spec"]["template"]
    return found


def checksums(template: dict[str, Any]) -> dict[str, str]:
    annotations = template["metadata"].get("annotations", {})
    return {k: v for k, v in annotations.items() if k.startswith("checksum/")}


DEFAULTS: tuple[Path, ...] = ()
CASES = [
    # (base values, variation, components whose checksums must change)
    (DEFAULTS, ("postgresql.auth.password=another-password",), {"store"}),
    (DEFAULTS, ("postgresql.auth.username=imaging",), {"store"}),
    (DEFAULTS, ("store.settings.db_pool_max_size=20",), {"store"}),
    (DEFAULTS, ("store.httpPort=8090",), {"store"}),
    (DEFAULTS, ("receiver.seriesIdleTimeout=30",), {"receiver"}),
    (DEFAULTS, ("receiver.settings.max_associations=64",), {"receiver"}),
    (DEFAULTS, ("receiver.aeTitle=OTHERAE",), {"receiver"}),
    (
        DEFAULTS,
        ("tls.dicom.enabled=true", "tls.dicom.existingSecret=dicom-tls"),
        {"receiver"},
    ),
    # Settings both services read.
    (DEFAULTS, ("logLevel=DEBUG",), {"store", "receiver"}),
    (DEFAULTS, ("store.grpcPort=50052",), {"store", "receiver"}),  # the receivers' address
    (DEFAULTS, ("grpcAuth.enabled=false",), {"store", "receiver"}),
    (
        DEFAULTS,
        (
            "tls.grpc.enabled=true",
            "tls.grpc.store.existingSecret=store-tls",
            "tls.grpc.receiver.existingSecret=receiver-tls",
        ),
        {"store", "receiver"},
    ),
    # Nothing a pod reads.
    (DEFAULTS, ("store.replicaCount=5",), set()),
    (DEFAULTS, ("receiver.replicaCount=3",), set()),
    (DEFAULTS, ("store.podDisruptionBudget.minAvailable=1",), set()),
    (DEFAULTS, ("metrics.serviceMonitor.enabled=true",), set()),
    (DEFAULTS, ("networkPolicy.enabled=true",), set()),
    (DEFAULTS, ("receiver.service.type=NodePort",), set()),
    # An external database given as a URL: only the store (and its migrations) use it.
    (
        ci("external-db-url"),
        ("externalDatabase.url=postgresql://seriesflow:rotated@db2.example.internal/seriesflow",),
        {"store"},
    ),
    (ci("external-db-url"), ("receiver.settings.spool_max_bytes=2GiB",), {"receiver"}),
    # Bitnami-style parts with migrations as a hook Job: the Job follows the database and
    # the log level, not the store's own settings.
    (
        ci("external-db-parts"),
        ("externalDatabase.host=db2.example.internal",),
        {"store", "migrate"},
    ),
    (ci("external-db-parts"), ("externalDatabase.sslmode=require",), {"store", "migrate"}),
    (
        ci("external-db-parts"),
        ("externalDatabase.existingSecretPasswordKey=other-key",),
        {"store", "migrate"},
    ),
    (ci("external-db-parts"), ("store.settings.db_pool_max_size=20",), {"store"}),
    (ci("external-db-parts"), ("receiver.seriesIdleTimeout=30",), {"receiver"}),
    (ci("external-db-parts"), ("logLevel=WARNING",), {"store", "receiver", "migrate"}),
    (ci("external-db-parts"), ("migrations.hook.backoffLimit=2",), set()),
    (
        ci("external-db-host-password"),
        ("externalDatabase.password=rotated-password",),
        {"store"},
    ),
]


def _case_id(case: tuple[tuple[Path, ...], tuple[str, ...], set[str]]) -> str:
    base = case[0][0].name.removesuffix("-values.yaml") if case[0] else "defaults"
    return f"{base}:{','.join(case[1])}"


@pytest.mark.parametrize(("base", "variation", "expected"), CASES, ids=map(_case_id, CASES))
def test_checksums_change_exactly_for_the_components_that_read_the_setting(
    base: tuple[Path, ...], variation: tuple[str, ...], expected: set[str]
) -> None:
    before = templates(render(base))
    after = templates(render(base, variation))
    assert before.keys() == after.keys()
    assert expected <= before.keys(), f"{expected - before.keys()} not rendered"
    changed = {c for c in before if checksums(before[c]) != checksums(after[c])}
    assert changed == expected
    for component in before.keys() - expected:
        # Not just the annotations: nothing in the pod template may change, or it rolls.
        assert before[component] == after[component], f"{component} would roll"
    for component in expected:
        assert checksums(after[component]), component


@pytest.mark.parametrize(
    "values",
    [pytest.param((), id="defaults")]
    + [pytest.param((p,), id=p.name.removesuffix("-values.yaml")) for p in CI_VALUES],
)
def test_every_render_of_the_same_values_gives_the_same_pod_templates(
    values: tuple[Path, ...],
) -> None:
    # Argo CD and Flux render with `helm template` on every sync: a value generated at
    # render time (a random password) would roll the pods, or break them, each time.
    # render() is cached, so ask helm again with an argument that changes nothing.
    first = templates(render(values))
    second = templates(render(values, ("nameOverride=",)))
    assert first == second
    assert all(checksums(t) for t in first.values())


def test_the_store_checksum_follows_the_bundled_database_password() -> None:
    # The store reads its database URL from the chart's Secret; its checksum/secret is what
    # rolls it when the password changes, and only it changes.
    base = templates(render())["store"]
    varied = templates(render(set_values=("postgresql.auth.password=another-password",)))["store"]
    assert checksums(base)["checksum/config"] == checksums(varied)["checksum/config"]
    assert checksums(base)["checksum/secret"] != checksums(varied)["checksum/secret"]


def test_labels_and_annotations_of_other_objects_do_not_change_checksums() -> None:
    # commonLabels do change pod labels (so pods roll), but not the config checksums:
    # they hash settings, not the ConfigMaps' metadata.
    base = templates(render())
    labelled = templates(render(set_values=("commonLabels.team=imaging",)))
    for component in base:
        assert checksums(base[component]) == checksums(labelled[component])
