"""A real Prometheus scrapes the running services during an ingest; the dashboard has data.

Debian's prometheus runs with the compose scrape configuration (targets localized, scraped
every second) and the alert rules loaded. Each service is scraped twice: as compose does (job
and instance only) and as the chart's ServiceMonitor does (the same job name, plus namespace
and pod), so one Prometheus holds both label shapes, as a shared one would. While store and
receiver run with the chart's environment and a study is sent (with a WatchSeries consumer
connected, so the event feed's panels have a watcher to show), every expression of every
dashboard panel is queried through the HTTP API with the dashboard's variables substituted
as Grafana would (values from the variables' own label_values queries, against this
Prometheus):
- all namespaces, jobs and pods (the default): every panel returns data;
- the cluster's namespace: every panel returns data, from that namespace's targets only;
- a namespace, or a pod, that does not exist: no panel returns data;
- the store's pod: the store's panels have data and the receiver-only ones none.
Every alert rule must evaluate without error and stay inactive.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conftest import free_port, require_tool
from deploy_runtime import chart_source, http_json, http_status, list_series
from deploy_stack import deployed, send_study, wait_for_catalog
from deploy_support import ROOT, metric_names

from seriesflow.v1 import series_store_pb2, series_store_pb2_grpc

pytestmark = pytest.mark.slow

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "seriesflow.json"
# Grafana replaces $__rate_interval with at least four scrape intervals; a fixed window that
# covers the whole ingest stands in for it here.
RATE_INTERVAL = "2m"
CONSUMER = "dashboard-test"
# The ServiceMonitor's view of each compose job: same job name, with namespace and pod.
NAMESPACE = "imaging"
PODS = {
    "seriesflow-store": "sf-seriesflow-store-0",
    "seriesflow-receiver": "sf-seriesflow-receiver-0",
}
# Compose's series: no namespace label (`namespace=""` matches exactly those).
COMPOSE = 'namespace=""'


def prometheus_config(local_port: Callable[[str], int], web_address: str) -> dict[str, Any]:
    """The compose prometheus.yml: targets on 127.0.0.1 at the local ports, 1 s scrapes; and
    each seriesflow job again with the labels the chart's ServiceMonitor gives its targets."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("alerting", None)  # no Alertmanager here: the rules' state is read directly
    cluster = []
    for job in config["scrape_configs"]:
        (static,) = job["static_configs"]
        static["targets"] = [
            web_address if job["job_name"] == "prometheus" else f"127.0.0.1:{local_port(t)}"
            for t in static["targets"]
        ]
        if job["job_name"] in PODS:
            labels = {"namespace": NAMESPACE, "pod": PODS[job["job_name"]]}
            cluster.append(
                {
                    "job_name": f"cluster-{job['job_name']}",
                    "static_configs": [{"targets": static["targets"], "labels": labels}],
                    # jobLabel: seriesflow.io/job gives the compose job's name.
                    "relabel_configs": [{"target_label": "job", "replacement": job["job_name"]}],
                }
            )
    config["scrape_configs"] += cluster
    return dict(config)


@contextmanager
def running_prometheus(folder: Path, local_port: Callable[[str], int]) -> Iterator[str]:
    binary = require_tool("prometheus")
    folder.mkdir(parents=True)
    web = f"127.0.0.1:{free_port()}"
    config = prometheus_config(local_port, web)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", folder / "alerts.yml")
    log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 (lives with the process)
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={web}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
        cwd=folder,
    )
    url = f"http://{web}"
    try:
        deadline = time.monotonic() + 60
        while http_status(f"{url}/-/ready") != 200:
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@contextmanager
def watching(address: str, token: str | None) -> Iterator[list[series_store_pb2.SeriesEvent]]:
    """A WatchSeries consumer named CONSUMER, from now on; yields the events it has read."""
    metadata = None if token is None else [("authorization", f"Bearer {token}")]
    received: list[series_store_pb2.SeriesEvent] = []
    with grpc.insecure_channel(address) as channel:
        stub = series_store_pb2_grpc.SeriesStoreStub(channel)
        call = stub.WatchSeries(
            series_store_pb2.WatchSeriesRequest(consumer=CONSUMER), metadata=metadata
        )

        def consume() -> None:
            # Ends with an RpcError: cancelled at the end, or the store stopped.
            with contextlib.suppress(grpc.RpcError):
                for event in call:
                    received.append(event)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        try:
            yield received
        finally:
            call.cancel()
            thread.join(10)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = http_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def substitute(expr: str, selection: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, value in selection.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"a variable left in {expr!r}"
    return expr


def dashboard_expressions(selection: dict[str, str]) -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], substitute(target["expr"], selection))
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def regex_escape(value: str) -> str:
    """A variable value in a regex matcher, escaped as Grafana's Prometheus source does."""
    return re.sub(r"([$^*{}\[\]'+?.()|\\])", r"\\\\\1", value)


def label_values(url: str, query: str) -> list[str]:
    """Grafana's label_values(selector, label), answered by this Prometheus."""
    found = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert found, query
    selector, label = found.groups()
    answer = http_json(
        f"{url}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
    )
    return sorted(answer["data"])


def select(url: str, chosen: dict[str, str | None]) -> dict[str, str]:
    """The dashboard's variables as Grafana substitutes them: each in order (a variable's
    query may use the ones before it), a chosen value as itself, None as All (allValue,
    or the alternation of every value the variable's query finds)."""
    board = json.loads(DASHBOARD.read_text())
    selection: dict[str, str] = {}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        name = variable["name"]
        value = chosen.get(name)
        if value is not None:
            selection[name] = regex_escape(value)
        elif variable["allValue"] is not None:
            selection[name] = variable["allValue"]
        else:
            values = label_values(url, substitute(variable["definition"], selection))
            # No values: Grafana shows None and substitutes "", which matches no job.
            alternatives = "|".join(regex_escape(v) for v in values)
            selection[name] = f"({alternatives})" if values else ""
    return selection


def selectors(expr: str) -> list[str]:
    """The series selectors of an expression: each metric name with its matchers, if any."""
    found = []
    for name in sorted(metric_names(expr)):
        found += re.findall(rf"(?<![\w:]){re.escape(name)}(?:\{{[^}}]*\}})?", expr)
    return found


def selected(url: str, selection: dict[str, str]) -> dict[str, list[bool]]:
    """Each panel expression: for each of its series selectors, whether it selects any."""
    return {
        f"{title}: {expr}": [bool(query(url, f"count({s})")) for s in selectors(expr)]
        for title, expr in dashboard_expressions(selection)
    }


def wait_for(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _qido_studies(running: Any) -> int:
    """GET /studies on the store's HTTP port (with the read token when there is one)."""
    port = running.local("store", "SERIESFLOW_STORE_HTTP_PORT")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/studies")
    if running.read_token:
        request.add_header("Authorization", f"Bearer {running.read_token}")
    with urllib.request.urlopen(request, timeout=20) as answer:
        body = answer.read()
    return len(json.loads(body)) if body else 0  # 204 (no match) has no body


def _stow_refused(running: Any) -> int:
    port = running.local("receiver", "SERIESFLOW_STOW_PORT")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/studies",
        data=b"not DICOM",
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_prometheus_scrapes_an_ingest_and_every_dashboard_panel_returns_data(
    database_url: str, tmp_path: Path
) -> None:
    with deployed(chart_source(), database_url, tmp_path / "services") as running:
        # Compose scrapes store:9101 and receiver:9102; here, the same ports localized.
        def local_port(target: str) -> int:
            return running.localizer.port(target.rsplit(":", 1)[1])

        with running_prometheus(tmp_path / "prometheus", local_port) as url:
            wait_for(
                "both targets up, in both label shapes",
                lambda: (
                    {
                        (r["metric"]["job"], r["metric"].get("pod", "")): r["value"][1]
                        for r in query(url, "up")
                    }
                    == {
                        ("seriesflow-store", ""): "1",
                        ("seriesflow-receiver", ""): "1",
                        ("prometheus", ""): "1",
                        ("seriesflow-store", PODS["seriesflow-store"]): "1",
                        ("seriesflow-receiver", PODS["seriesflow-receiver"]): "1",
                    }
                ),
            )
            with watching(running.grpc_address, running.read_token) as events:
                # The watch starts "from now": once the store counts it, it has its position.
                wait_for(
                    "the watcher on the store",
                    lambda: (
                        [
                            r["value"][1]
                            for r in query(url, 'sum(seriesflow_store_watchers{namespace=""})')
                        ]
                        == ["1"]
                    ),
                )
                # The HTTP doors, for their panels: a QIDO-RS search, and a STOW-RS request
                # refused as not multipart (it stores nothing: the counts below stay the
                # ingest's); again after the ingest, so their rates rise between scrapes.
                assert _qido_studies(running) == 0
                assert _stow_refused(running) == 415
                ae_title = running.local("receiver", "SERIESFLOW_AE_TITLE")
                expected = send_study(tmp_path / "dicom", running.dicom_port, ae_title, [4, 3, 2])
                wait_for_catalog(running, expected)
                # A finished unary RPC for the gRPC panels.
                list_series(running.grpc_address, running.read_token)
                assert _qido_studies(running) == 1  # send_study sends one study
                assert _stow_refused(running) == 415
                total = sum(expected.values())

                def completed() -> set[str]:
                    done = series_store_pb2.SERIES_EVENT_KIND_COMPLETED
                    return {e.series.series_instance_uid for e in events if e.kind == done}

                wait_for("a COMPLETED event of each series", lambda: completed() == set(expected))

                def scraped_after_ingest() -> bool:
                    # By the label shape: both scrape jobs must have seen the whole ingest.
                    stored = query(
                        url,
                        'min(sum by (namespace) (seriesflow_store_instances_total{result="new"}))',
                    )
                    done = query(
                        url, "min(sum by (namespace) (seriesflow_store_series_completions_total))"
                    )
                    return (
                        bool(stored)
                        and float(stored[0]["value"][1]) >= total
                        and float(done[0]["value"][1]) >= len(expected)
                    )

                wait_for("the ingest in Prometheus", scraped_after_ingest)
                time.sleep(3)  # a few more scrapes, so every rate() has samples on both sides

                # The default view: All for every variable. Namespace and pod have no
                # values in compose; All is `.*` for them, which matches a missing label.
                everything = select(url, {})
                assert everything == {
                    "namespace": ".*",
                    "job": "(seriesflow-receiver|seriesflow-store)",  # not prometheus
                    "pod": ".*",
                }
                assert label_values(url, "label_values(seriesflow_build_info, namespace)") == [
                    NAMESPACE
                ]
                empty, not_finite = [], []
                for title, expr in dashboard_expressions(everything):
                    result = query(url, expr)
                    if not result:
                        empty.append(f"{title}: {expr}")
                    elif not any(math.isfinite(float(r["value"][1])) for r in result):
                        not_finite.append(f"{title}: {expr} -> {result}")
                assert not empty, "panels without data:\n" + "\n".join(empty)
                assert not not_finite, "panels with only NaN/Inf:\n" + "\n".join(not_finite)

                # The cluster's namespace: every panel, from its targets alone.
                in_namespace = select(url, {"namespace": NAMESPACE})
                assert in_namespace["job"] == "(seriesflow-receiver|seriesflow-store)"
                missing = [
                    f"{title}: {expr}"
                    for title, expr in dashboard_expressions(in_namespace)
                    if not query(url, expr)
                ]
                assert not missing, f"panels without data in {NAMESPACE}:\n" + "\n".join(missing)
                scoped = substitute(
                    'sum(seriesflow_receiver_instances_total{namespace=~"$namespace", '
                    'job=~"$job", pod=~"$pod", status="success"})',
                    in_namespace,
                )
                assert float(query(url, scoped)[0]["value"][1]) == total, "one copy, not two"

                # Nothing selected that exists: no panel shows anything.
                for chosen in ({"namespace": "elsewhere"}, {"pod": "no-such-pod"}):
                    shown = [
                        p for p, hits in selected(url, select(url, chosen)).items() if any(hits)
                    ]
                    assert not shown, f"panels with data for {chosen}:\n" + "\n".join(shown)

                # The store's pod (job stays All: it comes before pod): the store's panels
                # select its series, the receiver-only panels none.
                store_pod = select(url, {"namespace": NAMESPACE, "pod": PODS["seriesflow-store"]})
                for panel, hits in selected(url, store_pod).items():
                    names = metric_names(panel.split(": ", 1)[1])
                    if all(n.startswith("seriesflow_store_") for n in names):
                        assert any(hits), f"store pod: no store series in {panel}"
                    elif all(n.startswith("seriesflow_receiver_") for n in names):
                        assert not any(hits), f"store pod: receiver series in {panel}"

                lag = query(url, "seriesflow_store_watch_lag_events")
                assert {r["metric"].get("consumer") for r in lag} == {CONSUMER}
                delivered = len(events)

            # The numbers are the ingest's, not just present.
            received = query(
                url, f'sum(seriesflow_receiver_instances_total{{{COMPOSE}, status="success"}})'
            )
            assert float(received[0]["value"][1]) == total
            flushed = query(url, f"sum(seriesflow_receiver_series_flushed_total{{{COMPOSE}}})")
            assert float(flushed[0]["value"][1]) >= len(expected)
            # Each series completed once, first time; every event the watcher read while
            # caught up was timed.
            firsts = query(
                url, f'sum(seriesflow_store_series_completions_total{{{COMPOSE}, version="1"}})'
            )
            assert float(firsts[0]["value"][1]) == len(expected)
            timed = query(url, f"sum(seriesflow_store_event_delivery_seconds_count{{{COMPOSE}}})")
            assert float(timed[0]["value"][1]) >= delivered
            # Both services tell their build and their process (no other exporter here).
            builds = query(url, f"seriesflow_build_info{{{COMPOSE}}}")
            assert sorted(r["metric"]["job"] for r in builds) == [
                "seriesflow-receiver",
                "seriesflow-store",
            ]
            assert all(r["metric"]["version"] and r["metric"]["revision"] for r in builds)
            started = query(url, f'process_start_time_seconds{{{COMPOSE}, job=~"seriesflow-.*"}}')
            assert len(started) == 2, started
            used = {
                name for _, expr in dashboard_expressions(everything) for name in metric_names(expr)
            }
            exposed = {
                r["metric"]["__name__"]
                for r in query(url, '{__name__=~"seriesflow_.*|process_.*", job=~"seriesflow-.*"}')
            } | {"up"}
            assert used <= exposed, (
                f"dashboard metrics the services do not expose: {used - exposed}"
            )

            def rules() -> list[dict[str, Any]]:
                groups = http_json(f"{url}/api/v1/rules")["data"]["groups"]
                return [rule for group in groups for rule in group["rules"]]

            alerts = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
            assert len(rules()) == sum(len(g["rules"]) for g in alerts), "all rules loaded"
            # A rule not evaluated yet reports the zero time, 0001-01-01.
            wait_for("rule evaluation", lambda: all(r["lastEvaluation"] > "2000" for r in rules()))
            for rule in rules():
                assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
                assert rule["state"] == "inactive", f"{rule['name']} fires on a healthy ingest"
