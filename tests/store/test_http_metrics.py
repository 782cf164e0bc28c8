"""The store's HTTP API is counted by route pattern, method and status; UIDs (and so
nothing a path carries) never reach a label."""

from __future__ import annotations

import urllib.error
import urllib.request

from st_harness import StoreThread, make_update, migrated_url, running_store, send, uid  # noqa: F401

# ruff: noqa: F811


def _get(store: StoreThread, path: str) -> int:
    url = f"http://127.0.0.1:{store.store.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample of `name` with exactly these labels (prometheus_client
    writes them sorted by name), 0 when absent."""
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "} "
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line[len(wanted) :])
    return 0.0


def test_requests_are_counted_by_route_method_and_status(running_store: StoreThread) -> None:
    series, study = uid(), uid()
    send(running_store.channel(), [make_update(series, [f"{series}.1"], study_uid=study)])
    assert _get(running_store, f"/studies?StudyInstanceUID={study}") == 200
    assert _get(running_store, "/studies?PatientID=nobody") == 204
    assert _get(running_store, f"/studies/{study}/series") == 200
    assert _get(running_store, f"/series/{uid()}/preview.png") == 404
    assert _get(running_store, "/no/such/path") == 404
    text = running_store.metrics_text()
    name = "seriesflow_store_http_requests_total"
    assert _sample(text, name, route="/studies", method="GET", code="200") == 1
    assert _sample(text, name, route="/studies", method="GET", code="204") == 1
    assert _sample(text, name, route="/studies/{study}/series", method="GET", code="200") == 1
    assert (
        _sample(text, name, route="/series/{series_uid}/preview.png", method="GET", code="404") == 1
    )
    assert _sample(text, name, route="unmatched", method="GET", code="404") == 1
    assert study not in text and series not in text  # no UID in any label
    assert 'seriesflow_store_http_request_duration_seconds_count{route="/studies"} 2.0' in text


def test_the_metrics_port_answers_only_on_metrics(running_store: StoreThread) -> None:
    # prometheus_client's own server answers every path with the metrics, so a probe
    # pointed at /readyz would have seen 200 and a healthy-looking body.
    port = running_store.store.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert b"seriesflow_store_database_up" in answer.read()
    for path in ("/readyz", "/livez", "/", "/metrics/", "/metricsx", "/favicon.ico"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                raise AssertionError(f"{path}: {answer.status}, expected 404")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404, path
            assert b"seriesflow_" not in exc.read(), path
