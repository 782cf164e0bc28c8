"""Series previews and the representative header: nearest the middle, over StoreSeries.

Receivers are played by StoreSeries calls; the HTTP API is asked over real sockets.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image
from st_harness import (  # noqa: F401
    StoreThread,
    make_update,
    migrated_url,
    rows,
    send,
    store_config,
    uid,
)

from seriesflow import migrations
from seriesflow.store import errors
from seriesflow.store.http import _STATUS
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

# ruff: noqa: F811

READ_TOKEN = "read-" + "r" * 40
WRITE_TOKEN = "write-" + "w" * 40


def png_bytes(width: int = 32, height: int = 24, grey: int = 128) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), grey).save(out, "PNG")
    return out.getvalue()


def header_of(n: int) -> str:
    return json.dumps({"00200013": {"vr": "IS", "Value": [n]}})


def update_with_header(series: str, base: str, numbers: list[int], header_n: int) -> Any:
    update = make_update(series, [f"{base}.{n}" for n in numbers], header=header_of(header_n))
    update.representative_sop_instance_uid = f"{base}.{header_n}"
    return update


def preview_report(
    series: str, sop: str, png: bytes = b"", failure: str = "", **fields: Any
) -> pb.SeriesUpdate:
    size = Image.open(io.BytesIO(png)).size if png else (0, 0)
    preview = pb.SeriesPreview(
        series_instance_uid=series,
        sop_instance_uid=sop,
        png=png,
        width=size[0],
        height=size[1],
        failure_reason=failure,
        window="WindowCenter/WindowWidth 40/400 LINEAR" if png else "",
        **fields,
    )
    return pb.SeriesUpdate(
        update_id=uuid.uuid4().hex,
        series=pb.SeriesAttributes(series_instance_uid=series),
        source=pb.Source(receiver_id="r0"),
        preview=preview,
    )


@pytest.fixture
def store(migrated_url: str) -> Iterator[StoreThread]:
    running = StoreThread(store_config(migrated_url, store_http_port=0), migrated_url)
    try:
        yield running
    finally:
        running.stop()


def stub(store: StoreThread) -> pb_grpc.SeriesStoreStub:
    return pb_grpc.SeriesStoreStub(store.channel())


def representative(url: str, series: str) -> tuple[str, Any]:
    ((sop, header),) = rows(
        url,
        "SELECT representative_sop_instance_uid, representative_header FROM series"
        " WHERE series_instance_uid = %s",
        series,
    )
    return sop, header


def stored_preview(store: StoreThread, series: str) -> pb.SeriesPreview:
    return stub(store).GetSeriesPreview(
        pb.GetSeriesPreviewRequest(series_instance_uid=series), timeout=10
    )


def ok(acks: list[pb.SeriesAck]) -> None:
    assert all(a.ok for a in acks), acks


# -- representative header ------------------------------------------------------------


def test_header_nearest_the_middle_wins_when_late_instances_move_it(
    store: StoreThread, migrated_url: str
) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        # First flush: instances 1..3, the receiver's middle is 2.
        ok(send(ch, [update_with_header(series, base, [1, 2, 3], 2)]))
        assert representative(migrated_url, series) == (
            f"{base}.2",
            {"00200013": {"vr": "IS", "Value": [2]}},
        )
        # Late instances 4..9 move the middle of 1..9 to 5: the second flush's middle (6)
        # is 1 away from it, the stored 2 is 3 away.
        ok(send(ch, [update_with_header(series, base, [4, 5, 6, 7, 8, 9], 6)]))
        assert representative(migrated_url, series)[0] == f"{base}.6"
        # A re-sent first flush is farther: nothing changes; a re-sent second: a tie.
        ok(send(ch, [update_with_header(series, base, [1, 2, 3], 2)]))
        ok(send(ch, [update_with_header(series, base, [4, 5, 6, 7, 8, 9], 6)]))
        sop, header = representative(migrated_url, series)
    assert (sop, header["00200013"]["Value"]) == (f"{base}.6", [6])
    reply = stub(store).GetSeries(pb.GetSeriesRequest(series_instance_uid=series), timeout=10)
    assert reply.series.representative_sop_instance_uid == f"{base}.6"


def test_the_exact_middle_replaces_a_nearby_header_and_is_then_kept(
    store: StoreThread, migrated_url: str
) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [update_with_header(series, base, [1, 2, 3, 4, 5], 4)]))
        ok(send(ch, [update_with_header(series, base, [1, 2, 3, 4, 5], 3)]))
        assert representative(migrated_url, series)[0] == f"{base}.3"
        ok(send(ch, [update_with_header(series, base, [1, 2, 3, 4, 5], 2)]))
    assert representative(migrated_url, series)[0] == f"{base}.3"


def test_a_header_of_an_instance_not_stored_does_not_replace_a_stored_ones(
    store: StoreThread, migrated_url: str
) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [update_with_header(series, base, [1, 2, 3], 1)]))
        stray = update_with_header(series, base, [3], 3)
        stray.representative_sop_instance_uid = f"{base}.77"  # never sent
        ok(send(ch, [stray]))
    assert representative(migrated_url, series)[0] == f"{base}.1"


def test_an_update_without_header_keeps_the_stored_one(
    store: StoreThread, migrated_url: str
) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [update_with_header(series, base, [1, 2, 3], 2)]))
        ok(send(ch, [make_update(series, [f"{base}.4"])]))
    assert representative(migrated_url, series)[0] == f"{base}.2"


def test_slice_position_orders_instances_without_instance_numbers_and_is_stored(
    store: StoreThread, migrated_url: str
) -> None:
    series, base = uid(), uid()
    update = make_update(series, [f"{base}.1", f"{base}.2", f"{base}.3"])
    for inst, position in zip(update.instances, (30.0, -10.5, 20.25), strict=True):
        inst.ClearField("instance_number")
        inst.slice_position = position
    update.representative_header_json = header_of(1)
    update.representative_sop_instance_uid = f"{base}.1"
    with store.channel() as ch:
        ok(send(ch, [update]))  # COPY path
        # Ordered by slice position: .2 (-10.5), .3 (20.25), .1 (30): .3 is the middle.
        again = make_update(series, [f"{base}.3", f"{base}.4"], header=header_of(3))
        again.representative_sop_instance_uid = f"{base}.3"
        again.instances[0].ClearField("instance_number")
        again.instances[0].slice_position = 20.25
        again.instances[1].ClearField("instance_number")
        again.instances[1].slice_position = 40.0
        ok(send(ch, [again]))  # a duplicate inside: the INSERT path
    # Now .2 .3 .1 .4: the middle (index 1) is still .3.
    assert representative(migrated_url, series)[0] == f"{base}.3"
    stored = rows(
        migrated_url,
        "SELECT sop_instance_uid, slice_position, instance_number FROM instances"
        " ORDER BY sop_instance_uid",
    )
    assert stored == [
        (f"{base}.1", 30.0, None),
        (f"{base}.2", -10.5, None),
        (f"{base}.3", 20.25, None),
        (f"{base}.4", 40.0, None),
    ]
    reply = stub(store).GetSeries(pb.GetSeriesRequest(series_instance_uid=series), timeout=10)
    assert {i.sop_instance_uid: i.slice_position for i in reply.instances}[f"{base}.2"] == -10.5


def test_instances_without_slice_position_store_null_on_both_insert_paths(
    store: StoreThread, migrated_url: str
) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [make_update(series, [f"{base}.1"])]))
        ok(send(ch, [make_update(series, [f"{base}.1", f"{base}.2"])]))
    assert rows(migrated_url, "SELECT count(*) FROM instances WHERE slice_position IS NULL") == [
        (2,)
    ]


# -- previews -------------------------------------------------------------------------


def test_a_series_without_preview_answers_pending_and_an_unknown_one_not_found(
    store: StoreThread,
) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [make_update(series, [f"{base}.1"])]))
    preview = stored_preview(store, series)
    assert (preview.failure_reason, preview.png) == ("pending", b"")
    with pytest.raises(grpc.RpcError) as caught:
        stored_preview(store, uid())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_preview_nearest_the_middle_is_kept_and_resending_changes_nothing(
    store: StoreThread, migrated_url: str
) -> None:
    series, base = uid(), uid()
    far, near = png_bytes(grey=10), png_bytes(40, 30, grey=200)
    with store.channel() as ch:
        ok(send(ch, [make_update(series, [f"{base}.{n}" for n in range(1, 8)])]))
        ok(send(ch, [preview_report(series, f"{base}.2", far)]))
        assert stored_preview(store, series).sop_instance_uid == f"{base}.2"
        ok(
            send(
                ch, [preview_report(series, f"{base}.4", near, window_center=40, window_width=400)]
            )
        )
        ok(send(ch, [preview_report(series, f"{base}.2", far)]))  # farther: ignored
        before = rows(migrated_url, "SELECT updated_at FROM series_previews")
        ok(send(ch, [preview_report(series, f"{base}.4", near)]))  # the same: a tie
        assert rows(migrated_url, "SELECT updated_at FROM series_previews") == before
    preview = stored_preview(store, series)
    assert (preview.sop_instance_uid, preview.png, preview.width, preview.height) == (
        f"{base}.4",
        near,
        40,
        30,
    )
    assert (preview.window_center, preview.window_width) == (40.0, 400.0)
    assert preview.window.startswith("WindowCenter")
    assert preview.failure_reason == ""


def test_late_instances_let_a_nearer_preview_replace_the_stored_one(store: StoreThread) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [make_update(series, [f"{base}.{n}" for n in (1, 2, 3)])]))
        ok(send(ch, [preview_report(series, f"{base}.2", png_bytes())]))
        ok(send(ch, [make_update(series, [f"{base}.{n}" for n in range(4, 10)])]))
        # Middle of 1..9 is 5: the stored 2 is 3 away, 6 is 1 away.
        ok(send(ch, [preview_report(series, f"{base}.6", png_bytes())]))
        ok(send(ch, [preview_report(series, f"{base}.2", png_bytes())]))
    assert stored_preview(store, series).sop_instance_uid == f"{base}.6"


def test_a_rendered_png_beats_a_failure_of_the_same_instance_never_the_reverse(
    store: StoreThread,
) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [make_update(series, [f"{base}.{n}" for n in (1, 2, 3)])]))
        ok(
            send(
                ch,
                [preview_report(series, f"{base}.2", failure="undecodable", failure_detail="JPEG")],
            )
        )
        failed = stored_preview(store, series)
        assert (failed.failure_reason, failed.failure_detail, failed.png) == (
            "undecodable",
            "JPEG",
            b"",
        )
        ok(send(ch, [preview_report(series, f"{base}.2", png_bytes())]))
        ok(send(ch, [preview_report(series, f"{base}.2", failure="failed")]))
    kept = stored_preview(store, series)
    assert (kept.failure_reason, kept.png[:8]) == ("", b"\x89PNG\r\n\x1a\n")


def test_a_preview_of_an_unknown_series_is_acked_and_stores_nothing(
    store: StoreThread, migrated_url: str
) -> None:
    with store.channel() as ch:
        acks = send(ch, [preview_report(uid(), uid(), png_bytes())])
    assert acks[0].ok
    assert rows(migrated_url, "SELECT count(*) FROM series_previews") == [(0,)]


def test_previews_write_no_series_event(store: StoreThread, migrated_url: str) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [make_update(series, [f"{base}.1"])]))
        events = rows(migrated_url, "SELECT count(*) FROM series_events")
        ok(send(ch, [preview_report(series, f"{base}.1", png_bytes())]))
    assert rows(migrated_url, "SELECT count(*) FROM series_previews") == [(1,)]
    assert rows(migrated_url, "SELECT count(*) FROM series_events") == events


def test_update_then_preview_in_one_stream_both_apply(store: StoreThread) -> None:
    series, base = uid(), uid()
    with store.channel() as ch:
        acks = send(
            ch,
            [
                make_update(series, [f"{base}.1", f"{base}.2"]),
                preview_report(series, f"{base}.1", png_bytes()),
            ],
        )
    ok(acks)
    assert stored_preview(store, series).sop_instance_uid == f"{base}.1"


def _with(report: pb.SeriesUpdate, **changes: Any) -> pb.SeriesUpdate:
    for name, value in changes.items():
        if name == "instances":
            report.instances.append(value)
        elif name == "holding":
            report.holding = value
        else:
            setattr(report.preview, name, value)
    return report


def _nan_slice() -> pb.SeriesUpdate:
    update = make_update(uid(), [uid(1)])
    update.instances[0].slice_position = float("nan")
    return update


def _bad_representative() -> pb.SeriesUpdate:
    update = make_update(uid(), [uid(1)], header=header_of(1))
    update.representative_sop_instance_uid = "not-a-uid"
    return update


INVALID = {
    "instances": (
        lambda: _with(
            preview_report(uid(), uid(), png_bytes()), instances=pb.Instance(sop_instance_uid=uid())
        ),
        "instances",
    ),
    "holding": (lambda: _with(preview_report(uid(), uid(), png_bytes()), holding=True), "preview"),
    "not a png": (
        lambda: _with(preview_report(uid(), uid(), png_bytes()), png=b"GIF89a...."),
        "preview.png",
    ),
    "too large": (
        lambda: _with(
            preview_report(uid(), uid(), png_bytes()),
            png=b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024),
        ),
        "preview.png",
    ),
    "zero width": (
        lambda: _with(preview_report(uid(), uid(), png_bytes()), width=0),
        "preview.width",
    ),
    "too tall": (
        lambda: _with(preview_report(uid(), uid(), png_bytes()), height=4097),
        "preview.height",
    ),
    "png and failure": (
        lambda: _with(preview_report(uid(), uid(), png_bytes()), failure_reason="failed"),
        "preview.failure_reason",
    ),
    "no png, no reason": (lambda: preview_report(uid(), uid()), "preview.failure_reason"),
    "unknown reason": (
        lambda: preview_report(uid(), uid(), failure="pending"),
        "preview.failure_reason",
    ),
    "NUL in window": (
        lambda: _with(preview_report(uid(), uid(), png_bytes()), window="a\0b"),
        "preview.window",
    ),
    "NUL in detail": (
        lambda: preview_report(uid(), uid(), failure="failed", failure_detail="x\0"),
        "preview.failure_detail",
    ),
    "bad sop uid": (
        lambda: preview_report(uid(), "1.2.x", png_bytes()),
        "preview.sop_instance_uid",
    ),
    "no series": (lambda: preview_report("", uid(), png_bytes()), "series.series_instance_uid"),
    "infinite window": (
        lambda: _with(preview_report(uid(), uid(), png_bytes()), window_width=float("inf")),
        "preview.window_width",
    ),
    "nan slice position": (_nan_slice, "instances[0].slice_position"),
    "bad representative uid": (_bad_representative, "representative_sop_instance_uid"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_preview_reports_and_positions_are_rejected_naming_the_field(
    store: StoreThread, migrated_url: str, case: str
) -> None:
    build, field = INVALID[case]
    good_series, base = uid(), uid()
    with store.channel() as ch:
        # The bad report is rejected alone: the good update after it still commits.
        acks = send(ch, [build(), make_update(good_series, [f"{base}.1"])])
    assert not acks[0].ok
    assert acks[0].error.kind == pb.AckError.KIND_INVALID
    assert acks[0].error.field == field, acks[0].error.message
    assert acks[1].ok
    assert rows(migrated_url, "SELECT count(*) FROM series_previews") == [(0,)]


# -- HTTP ------------------------------------------------------------------------------


def http_get(store: StoreThread, path: str, token: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{store.store.http_port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_http_serves_the_preview_png_and_says_why_when_there_is_none(
    store: StoreThread,
) -> None:
    with_png, without, base = uid(), uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [make_update(with_png, [f"{base}.1"]), make_update(without, [f"{base}.2"])]))
        ok(send(ch, [preview_report(with_png, f"{base}.1", png_bytes(50, 20))]))
    status, kind, body = http_get(store, f"/series/{with_png}/preview.png")
    assert (status, kind) == (200, "image/png")
    assert Image.open(io.BytesIO(body)).size == (50, 20)

    status, kind, body = http_get(store, f"/series/{without}/preview.png")
    assert status == 404 and kind.startswith("application/json")
    assert json.loads(body)["reason"] == "pending"

    status, _, body = http_get(store, f"/series/{uid()}/preview.png")
    assert status == 404 and json.loads(body)["reason"] == "NotFound"
    status, _, body = http_get(store, "/series/not-a-uid/preview.png")
    assert status == 400 and "series_instance_uid" in json.loads(body)["error"]


def test_http_preview_is_readable_with_curl(store: StoreThread, tmp_path: Path) -> None:
    import subprocess

    series, base = uid(), uid()
    with store.channel() as ch:
        ok(send(ch, [make_update(series, [f"{base}.1"])]))
        ok(send(ch, [preview_report(series, f"{base}.1", png_bytes(8, 8))]))
    out = tmp_path / "p.png"
    url = f"http://127.0.0.1:{store.store.http_port}/series/{series}/preview.png"
    subprocess.run(["curl", "-fsS", "-o", str(out), url], check=True, timeout=30)
    assert Image.open(out).size == (8, 8)


def test_contact_sheet_lists_every_series_of_the_study(store: StoreThread) -> None:
    study, base = uid(), uid()
    series = [uid() for _ in range(3)]
    with store.channel() as ch:
        ok(
            send(
                ch,
                [
                    make_update(
                        s,
                        [f"{base}.{i}{n}" for n in range(1, i + 2)],
                        study_uid=study,
                        modality=modality,
                        series_description=f"<desc {i}>",
                        series_number=i,
                    )
                    for i, (s, modality) in enumerate(zip(series, ("CT", "MR", "SR"), strict=True))
                ],
            )
        )
        ok(send(ch, [preview_report(series[0], f"{base}.01", png_bytes())]))
        ok(send(ch, [preview_report(series[2], f"{base}.21", failure="no_pixel_data")]))
    status, kind, body = http_get(store, f"/studies/{study}/previews")
    assert status == 200 and kind.startswith("text/html")
    page = body.decode()
    for i, s in enumerate(series):
        assert f'data-series="{s}"' in page
        assert f"&lt;desc {i}&gt;" in page  # escaped
        assert f"{i + 1} instances" in page
    assert f'src="../../series/{series[0]}/preview.png"' in page
    assert f"series/{series[1]}/preview.png" not in page
    assert "no preview: pending" in page and "no preview: no_pixel_data" in page
    assert "MR" in page and "COMPLETE" in page

    status, _, _ = http_get(store, f"/studies/{uid()}/previews")
    assert status == 404


def test_healthz_answers_ok(store: StoreThread) -> None:
    assert http_get(store, "/healthz")[:2] == (200, "text/plain; charset=utf-8")


def test_every_store_error_has_an_http_status() -> None:
    assert set(_STATUS) == set(errors.StoreError.__subclasses__())


def test_http_needs_a_read_token_when_tokens_are_configured(
    migrated_url: str, tmp_path: Path
) -> None:
    write, read = tmp_path / "write", tmp_path / "read"
    write.write_text(WRITE_TOKEN + "\n")
    read.write_text(READ_TOKEN + "\n")
    config = store_config(
        migrated_url,
        store_http_port=0,
        grpc_write_tokens_file=write,
        grpc_read_tokens_file=read,
    )
    store = StoreThread(config, migrated_url)
    try:
        series, base = uid(), uid()
        with store.channel() as ch:
            acks = list(
                pb_grpc.SeriesStoreStub(ch).StoreSeries(
                    iter([make_update(series, [f"{base}.1"])]),
                    timeout=30,
                    metadata=[("authorization", f"Bearer {WRITE_TOKEN}")],
                )
            )
        ok(acks)
        path = f"/series/{series}/preview.png"
        status, _, body = http_get(store, path)
        assert (status, json.loads(body)["reason"]) == (401, "missing_credentials")
        assert http_get(store, path, "nope")[0] == 401
        assert http_get(store, path, WRITE_TOKEN)[0] == 403
        status, _, body = http_get(store, path, READ_TOKEN)
        assert (status, json.loads(body)["reason"]) == (404, "pending")
        assert http_get(store, "/healthz")[0] == 200  # open, like gRPC health
    finally:
        store.stop()


def test_http_port_in_use_stops_the_store_naming_the_setting(migrated_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="SERIESFLOW_STORE_HTTP_PORT"):
            StoreThread(store_config(migrated_url, store_http_port=port), migrated_url)


# -- schema ----------------------------------------------------------------------------


def test_migration_0004_downgrades_and_upgrades_with_previews_stored(migrated_url: str) -> None:
    series, base = uid(), uid()
    store = StoreThread(store_config(migrated_url, store_http_port=0), migrated_url)
    try:
        with store.channel() as ch:
            ok(send(ch, [update_with_header(series, base, [1, 2, 3], 2)]))
            ok(send(ch, [preview_report(series, f"{base}.2", png_bytes())]))
    finally:
        store.stop()
    try:
        migrations.downgrade(migrated_url, "0003")
        assert rows(migrated_url, "SELECT to_regclass('series_previews') IS NULL") == [(True,)]
        assert rows(migrated_url, "SELECT num_instances FROM series") == [(3,)]
    finally:
        migrations.upgrade(migrated_url)
    assert representative(migrated_url, series)[0] == ""  # forgotten, not invented
    assert rows(migrated_url, "SELECT count(*) FROM instances WHERE slice_position IS NULL") == [
        (3,)
    ]
