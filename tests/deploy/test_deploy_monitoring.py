"""The Grafana dashboard, the Prometheus alert rules and their runbooks, each kept once.

deploy/grafana/dashboards/seriesflow.json and deploy/prometheus/alerts.yml are the sources;
the chart carries byte-identical copies (helm cannot read files outside the chart). Every
expression may only name metrics the services register (their Prometheus registries, built
here as each service builds them), every dashboard selector is scoped by the namespace, job
and pod variables, and the rules are checked and unit-tested by promtool. Each alert links
its section of docs/runbooks.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require_tool
from deploy_support import CHART, ROOT, exposed_series_names, metric_names
from prometheus_client import CollectorRegistry

from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.store.grpc_metrics import GrpcMetrics
from seriesflow.store.metrics import StoreMetrics

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "seriesflow.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = Path(__file__).parent / "data" / "alerts_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
# Every metric selector of every panel carries these matchers (the dashboard's variables).
SCOPE = 'namespace=~"$namespace", job=~"$job", pod=~"$pod"'


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def panel_expressions() -> Iterator[tuple[str, str]]:
    for panel in panels():
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def registered_series_names() -> set[str]:
    """The series names the store's and the receiver's registries expose, from the registries
    themselves (the store's gRPC metrics share its registry, as in store.server)."""
    store = StoreMetrics()
    GrpcMetrics(store.registry)
    registries: list[CollectorRegistry] = [store.registry, ReceiverMetrics().registry]
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
            else:
                names.add(family.name)
    return names


@pytest.mark.parametrize(
    ("canonical", "copy"),
    [
        (DASHBOARD, CHART / "files" / "dashboards" / "seriesflow.json"),
        (ALERTS, CHART / "files" / "alerts.yml"),
    ],
    ids=["dashboard", "alerts"],
)
def test_chart_copy_is_identical_to_the_canonical_file(canonical: Path, copy: Path) -> None:
    assert copy.read_bytes() == canonical.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {canonical.relative_to(ROOT)}: edit the "
        f"canonical file, then `cp {canonical.relative_to(ROOT)} {copy.relative_to(ROOT)}`"
    )


def test_chart_files_hold_only_the_checked_copies() -> None:
    files = {
        str(p.relative_to(CHART / "files")) for p in (CHART / "files").rglob("*") if p.is_file()
    }
    assert files == {"alerts.yml", "dashboards/seriesflow.json"}


def test_the_listed_metric_names_are_all_registered_by_the_services() -> None:
    # deploy_support's lists are the names docs and tests rely on; a renamed metric fails here.
    assert exposed_series_names() <= registered_series_names()


def test_dashboard_panels_query_only_metrics_the_services_expose() -> None:
    known = registered_series_names() | {"up"}  # up: Prometheus's own, one per target
    used: set[str] = set()
    for title, expr in panel_expressions():
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        assert names <= known, f"panel {title!r} uses unknown metrics {names - known}"
        used |= names
    assert len(used) >= 20, "the dashboard covers most of what the services expose"


def test_alert_rules_query_only_metrics_the_services_expose() -> None:
    known = registered_series_names() | {"up"}
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names and names <= known, f"{rule['alert']}: unknown metrics {names - known}"


def test_metric_name_extraction_sees_through_promql_syntax() -> None:
    # The two checks above are only as good as this parser.
    assert metric_names(
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="b c", d!~"e|f"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("delta(a[15m]) > 0 and b > 1000 or vector(0)") == {"a", "b"}
    assert metric_names('sum(rate(typo_metric_total{status="ok"}[5m]))') == {"typo_metric_total"}


@pytest.mark.parametrize(
    ("view", "metric", "grouping"),
    [
        ("ingest rate", "seriesflow_receiver_instances_total", ""),
        ("instances by status", "seriesflow_receiver_instances_total", "status"),
        ("series completed by reason", "seriesflow_receiver_series_flushed_total", "reason"),
        ("spool depth", "seriesflow_receiver_spool_pending_instances", ""),
        ("oldest pending age", "seriesflow_receiver_spool_oldest_pending_age_seconds", ""),
        (
            "last instance to ack latency",
            "seriesflow_receiver_series_ack_latency_seconds_bucket",
            "le",
        ),
        ("store transaction latency", "seriesflow_store_transaction_duration_seconds_bucket", "le"),
        ("grpc error rate", "seriesflow_store_grpc_server_handled_total", "grpc_code"),
        ("associations", "seriesflow_receiver_associations_active", ""),
        ("completions by reason", "seriesflow_store_series_completions_total", "reason"),
        ("reopen rate", "seriesflow_store_series_completions_total", 'version!="1"'),
        ("completion delay", "seriesflow_store_completion_delay_seconds_bucket", "le"),
        ("holds expired", "seriesflow_store_holds_expired_total", ""),
        ("events written by kind", "seriesflow_store_series_events_total", "kind"),
        ("watchers connected", "seriesflow_store_watchers", ""),
        ("watch lag by consumer", "seriesflow_store_watch_lag_events", "consumer"),
        ("event delivery latency", "seriesflow_store_event_delivery_seconds_bucket", "le"),
        ("http requests by route", "seriesflow_store_http_requests_total", "route"),
        ("http latency", "seriesflow_store_http_request_duration_seconds_bucket", "le"),
        ("stow-rs requests by status", "seriesflow_receiver_stow_requests_total", "status"),
        ("stow-rs latency", "seriesflow_receiver_stow_request_seconds_bucket", "le"),
        ("database up", "seriesflow_store_database_up", ""),
        ("receivers connected", "seriesflow_receiver_store_connected", ""),
        ("dead letters", "seriesflow_receiver_dead_letters", ""),
        ("spool free", "seriesflow_receiver_spool_limit_bytes", ""),
        ("versions running", "seriesflow_build_info", "version"),
        ("cpu", "process_cpu_seconds_total", "pod"),
        ("memory", "process_resident_memory_bytes", "pod"),
        ("restarts", "process_start_time_seconds", "changes("),
        ("file descriptors", "process_open_fds", "pod"),
    ],
)
def test_dashboard_has_each_required_view(view: str, metric: str, grouping: str) -> None:
    exprs = [expr for _, expr in panel_expressions() if metric in metric_names(expr)]
    assert exprs, f"no panel for {view}"
    if grouping:
        assert any(grouping in expr for expr in exprs), f"{view}: nothing split by {grouping}"
    if grouping == "le":
        quantiles = {e.split("(", 2)[1].split(",")[0] for e in exprs if "histogram_quantile" in e}
        assert {"0.5", "0.95", "0.99"} <= quantiles, f"{view}: quantiles {quantiles}"


def test_dashboard_works_in_any_grafana_with_a_prometheus_source() -> None:
    board = dashboard()
    assert board["uid"] == "seriesflow"
    source, *scoping = board["templating"]["list"]
    assert (source["name"], source["type"], source["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    assert [v["name"] for v in scoping] == ["namespace", "job", "pod"]
    for variable in scoping:
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def test_the_variables_select_only_seriesflow_targets_with_or_without_kubernetes_labels() -> None:
    found = variables()
    # Values come from seriesflow_build_info, which only seriesflow's processes export; each
    # variable narrows the next.
    assert found["namespace"]["definition"] == "label_values(seriesflow_build_info, namespace)"
    assert found["job"]["definition"] == (
        'label_values(seriesflow_build_info{namespace=~"$namespace"}, job)'
    )
    assert found["pod"]["definition"] == (
        'label_values(seriesflow_build_info{namespace=~"$namespace", job=~"$job"}, pod)'
    )
    for name in ("namespace", "job", "pod"):
        variable = found[name]
        assert variable["query"]["query"] == variable["definition"]
        assert variable["includeAll"] and variable["multi"], name
        assert variable["current"]["value"] == ["$__all"], f"{name} starts at All"
    # Compose's targets have neither namespace nor pod: All must match the missing label,
    # which `=~".*"` does and a list of the (no) values would not.
    assert found["namespace"]["allValue"] == ".*"
    assert found["pod"]["allValue"] == ".*"
    # All jobs is the list of the jobs that export seriesflow_build_info, not `.*`: up and
    # process_* of every other application in a shared Prometheus stay out.
    assert found["job"]["allValue"] is None


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")


def test_every_dashboard_selector_is_scoped_by_namespace_job_and_pod() -> None:
    for title, expr in panel_expressions():
        selectors = _SELECTOR.findall(expr)
        assert {name for name, _ in selectors} == metric_names(expr), (
            f"panel {title!r}: a metric without matchers in {expr!r}"
        )
        for name, matchers in selectors:
            assert matchers.startswith(SCOPE), f"panel {title!r}: {name}{{{matchers}}} unscoped"


def test_per_target_panels_keep_namespace_and_pod_apart() -> None:
    # Two releases in one Prometheus: a panel split by instance alone would put the same
    # address of two clusters, or a pod's old and new address, on one line.
    for title, expr in panel_expressions():
        assert "by (instance)" not in expr, f"panel {title!r} groups by instance alone"


def test_alert_rules_pass_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_fires_on_its_situation_and_not_on_a_healthy_system(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    shutil.copy(ALERT_TESTS, tmp_path / "alerts_test.yml")
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tested
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert firing == {rule["alert"] for rule in alert_rules()}, "every alert has a firing case"


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["alert"].startswith("Seriesflow")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, - for spaces."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    current = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            current = _anchor(line[3:])
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def test_every_alert_links_its_own_runbook_section() -> None:
    sections = runbook_sections()
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md", f"{rule['alert']}: runbook_url {url!r}"
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: anchor {anchor!r}"
        assert anchor in sections, f"{rule['alert']}: no section {anchor} in docs/runbooks.md"


def test_every_runbook_section_says_what_the_alert_means_how_to_check_and_fix() -> None:
    sections = runbook_sections()
    assert set(sections) == {rule["alert"].lower() for rule in alert_rules()}, (
        "one section per alert, none for an alert that no longer exists"
    )
    for anchor, text in sections.items():
        for part in ("**Means.**", "**Check.**", "**Fix.**"):
            assert part in text, f"runbook {anchor}: no {part}"
    # Links between sections point at sections that exist.
    for target in re.findall(r"\]\(#([^)]+)\)", RUNBOOKS.read_text()):
        assert target in sections, f"docs/runbooks.md links #{target}, which is no section"


def test_alert_rules_find_targets_by_job_pattern_not_by_one_name() -> None:
    # up and process_* are the only metrics other applications share; every matcher on job
    # is a regex that holds for compose's job_name and for the chart's ServiceMonitor.
    jobs = {"seriesflow-store", "seriesflow-receiver", "sf-seriesflow-store"}
    for rule in alert_rules():
        for op, value in re.findall(r'job(=~|=|!=|!~)"([^"]*)"', rule["expr"]):
            assert op == "=~", f"{rule['alert']}: job{op}{value!r} names one job"
            assert any(re.fullmatch(value, job) for job in jobs), rule["alert"]
        if metric_names(rule["expr"]) & {"up", "process_start_time_seconds"}:
            assert "job=~" in rule["expr"], f"{rule['alert']}: up/process_* of every job"


def test_alert_aggregations_keep_namespace() -> None:
    for rule in alert_rules():
        for grouping in re.findall(r"\b(?:sum|max|min|count|avg) by \(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in grouping.split(",")}
            assert "namespace" in labels, f"{rule['alert']}: by ({grouping}) mixes namespaces"
