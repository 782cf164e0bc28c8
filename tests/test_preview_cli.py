"""`seriesflow preview` as its own process against a real store: a series' PNG written as the
store keeps it, a study's contact sheet laid out with every series, exit statuses."""

# ruff: noqa: F811  (fixtures are imported from st_harness: pytest finds them by name)

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent / "store"))
from st_harness import (  # noqa: F401 (fixtures)
    StoreThread,
    make_update,
    migrated_url,
    send,
    store_config,
    uid,
)

from seriesflow.cli.preview import TILE
from seriesflow.v1 import series_store_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
READ_TOKEN = "r-preview-1f2e3d4c5b6a79880a1b2c3d"
WRITE_TOKEN = "w-preview-9a8b7c6d5e4f30211f2e3d4c"


def png_bytes(width: int, height: int, grey: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), grey).save(out, "PNG")
    return out.getvalue()


def preview_report(series: str, sop: str, png: bytes = b"", failure: str = "") -> pb.SeriesUpdate:
    size = Image.open(io.BytesIO(png)).size if png else (0, 0)
    return pb.SeriesUpdate(
        update_id=uuid.uuid4().hex,
        series=pb.SeriesAttributes(series_instance_uid=series),
        source=pb.Source(receiver_id="r0"),
        preview=pb.SeriesPreview(
            sop_instance_uid=sop, png=png, width=size[0], height=size[1], failure_reason=failure
        ),
    )


def run_cli(store: StoreThread | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    address = store.address if store is not None else f"127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-m", "seriesflow", "preview", "--store-address", address, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )


@pytest.fixture
def store(migrated_url: str) -> Iterator[StoreThread]:
    running = StoreThread(store_config(migrated_url, store_http_port=0), migrated_url)
    try:
        yield running
    finally:
        running.stop()


def test_series_preview_is_written_exactly_as_the_store_keeps_it(
    store: StoreThread, tmp_path: Path
) -> None:
    series, base = uid(), uid()
    png = png_bytes(30, 20, 77)
    with store.channel() as ch:
        send(ch, [make_update(series, [f"{base}.1"])])
        assert send(ch, [preview_report(series, f"{base}.1", png)])[0].ok
    out = tmp_path / "preview.png"
    done = run_cli(store, series, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == png
    assert "30x20" in done.stderr


def test_no_preview_or_unknown_series_exits_1_saying_why(
    store: StoreThread, tmp_path: Path
) -> None:
    series, failed, base = uid(), uid(), uid()
    with store.channel() as ch:
        send(ch, [make_update(series, [f"{base}.1"]), make_update(failed, [f"{base}.2"])])
        send(ch, [preview_report(failed, f"{base}.2", failure="no_pixel_data")])
    out = tmp_path / "p.png"
    pending = run_cli(store, series, "-o", str(out))
    assert (pending.returncode, "pending" in pending.stderr) == (1, True)
    no_pixels = run_cli(store, failed, "-o", str(out))
    assert (no_pixels.returncode, "no_pixel_data" in no_pixels.stderr) == (1, True)
    unknown = run_cli(store, uid(), "-o", str(out))
    assert (unknown.returncode, "no series" in unknown.stderr) == (1, True)
    assert not out.exists()


def test_contact_sheet_lays_out_every_series_with_its_preview_or_a_grey_tile(
    store: StoreThread, tmp_path: Path
) -> None:
    study, base = uid(), uid()
    series = [uid() for _ in range(3)]
    with store.channel() as ch:
        send(
            ch,
            [
                make_update(
                    s,
                    [f"{base}.{i}{n}" for n in range(1, 3)],
                    study_uid=study,
                    series_description=f"series {i}",
                    series_number=i,
                )
                for i, s in enumerate(series)
            ],
        )
        send(ch, [preview_report(series[0], f"{base}.01", png_bytes(64, 64, 200))])
        send(ch, [preview_report(series[1], f"{base}.11", png_bytes(512, 256, 90))])
    out = tmp_path / "sheet.png"
    done = run_cli(store, "--study", study, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "3 series" in done.stderr
    sheet = Image.open(out).convert("RGB")
    # One row of three tiles, each TILE wide plus a gap, and a title line above.
    assert sheet.size[0] == 8 + 3 * (TILE + 8)
    top = 24

    def pixel(index: int, dx: int, dy: int) -> tuple[int, int, int]:
        return sheet.getpixel((8 + index * (TILE + 8) + dx, top + dy))  # type: ignore[return-value]

    middle = TILE // 2
    assert pixel(0, middle, middle) == (200, 200, 200)  # 64 px preview, centred, not scaled
    assert pixel(0, middle, middle - 40) == (17, 17, 17)  # background around it
    assert pixel(1, 2, middle) == (90, 90, 90)  # 512x256 scaled down to 256x128
    assert pixel(1, middle, 40) == (17, 17, 17)
    assert pixel(2, 4, 4) == (48, 48, 48)  # no preview: the grey tile


def test_unknown_study_exits_1_and_unreachable_store_exits_2(
    store: StoreThread, tmp_path: Path
) -> None:
    out = tmp_path / "sheet.png"
    unknown = run_cli(store, "--study", uid(), "-o", str(out))
    assert (unknown.returncode, "no study" in unknown.stderr) == (1, True)
    down = run_cli(None, uid(), "-o", str(out))
    assert (down.returncode, "UNAVAILABLE" in down.stderr) == (2, True)


def test_neither_or_both_of_series_and_study_is_a_usage_error(
    store: StoreThread, tmp_path: Path
) -> None:
    out = str(tmp_path / "x.png")
    assert run_cli(store, "-o", out).returncode == 2
    assert run_cli(store, uid(), "--study", uid(), "-o", out).returncode == 2


def test_a_read_token_is_sent_from_the_token_file(migrated_url: str, tmp_path: Path) -> None:
    write, read = tmp_path / "write", tmp_path / "read"
    write.write_text(WRITE_TOKEN + "\n")
    read.write_text(READ_TOKEN + "\n")
    config = store_config(
        migrated_url, store_http_port=0, grpc_write_tokens_file=write, grpc_read_tokens_file=read
    )
    store = StoreThread(config, migrated_url)
    try:
        out = tmp_path / "p.png"
        series = uid()
        refused = run_cli(store, series, "-o", str(out))
        assert (refused.returncode, "UNAUTHENTICATED" in refused.stderr) == (2, True)
        token_file = tmp_path / "token"
        token_file.write_text(READ_TOKEN + "\n")
        # Through the environment, like the receiver's setting of the same name.
        admitted = run_cli(
            store, series, "-o", str(out), SERIESFLOW_STORE_TOKEN_FILE=str(token_file)
        )
        assert admitted.returncode == 1, admitted.stderr  # authenticated: the series is unknown
        assert "no series" in admitted.stderr
    finally:
        store.stop()
