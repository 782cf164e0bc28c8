"""`seriesflow preview`: a series' preview PNG, or a study's contact sheet, from the store.

    seriesflow preview SERIES_UID -o preview.png
    seriesflow preview --study STUDY_UID -o sheet.png

The first writes the PNG the store keeps for the series (GetSeriesPreview) as it is. The
second asks the store for the study (GetStudy) and each series' preview, and lays them out
with Pillow in a grid, the series' description, modality and instance count under each; a
series without a preview gets a grey tile that says why (pending, no_pixel_data, ...).

The store is reached like `seriesflow watch` reaches it (SERIESFLOW_STORE_ADDRESS, a token
file with the read scope, TLS). Exit status: 0 written; 1 nothing to write (unknown series
or study, no preview yet, or a preview that failed); 2 the store refused or is unreachable.
grpc and Pillow are imported only when a preview is asked for.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from seriesflow import settings
from seriesflow.cli.watch import WatchConfig

if TYPE_CHECKING:
    from PIL import Image

    from seriesflow.v1 import series_store_pb2 as pb

EXIT_WRITTEN = 0
EXIT_NOTHING = 1
EXIT_REFUSED = 2

TILE = 256  # px: previews are scaled to fit a TILE x TILE square
_CAPTION = 46  # px under each tile: three lines of Pillow's default font
_GAP = 8
_COLUMNS = 4
_TIMEOUT = 30.0


def add_preview_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "series_uid", nargs="?", default="", metavar="SERIES_UID", help="the series to fetch"
    )
    parser.add_argument(
        "--study",
        dest="preview_study",
        default="",
        metavar="STUDY_UID",
        help="write a contact sheet of every series of this study instead",
    )
    parser.add_argument(
        "-o",
        "--output",
        dest="preview_output",
        required=True,
        type=Path,
        metavar="FILE",
        help="PNG file to write",
    )
    settings.add_flags(parser, WatchConfig)


class _Refused(Exception):
    """The store refused the call or could not be reached: exit 2 with this message."""


class _Nothing(Exception):
    """There is nothing to write: exit 1 with this message."""


def main(config: WatchConfig, args: argparse.Namespace, *, err: TextIO = sys.stderr) -> int:
    series_uid, study_uid = args.series_uid.strip(), args.preview_study.strip()
    if bool(series_uid) == bool(study_uid):
        print("seriesflow preview: give either SERIES_UID or --study STUDY_UID", file=err)
        return EXIT_REFUSED
    output: Path = args.preview_output
    try:
        with _Client(config) as client:
            if series_uid:
                preview = client.preview(series_uid)
                if not preview.png:
                    raise _Nothing(f"series {series_uid} has no preview: {_why(preview)}")
                data = bytes(preview.png)
                what = f"preview of series {series_uid} ({preview.width}x{preview.height})"
            else:
                data, count = contact_sheet(client, study_uid)
                what = f"contact sheet of study {study_uid} ({count} series)"
    except _Nothing as exc:
        print(f"seriesflow preview: {exc}", file=err)
        return EXIT_NOTHING
    except _Refused as exc:
        print(f"seriesflow preview: {exc}", file=err)
        return EXIT_REFUSED
    try:
        output.write_bytes(data)
    except OSError as exc:
        print(f"seriesflow preview: cannot write {output}: {exc}", file=err)
        return EXIT_REFUSED
    print(f"wrote {what} to {output}", file=err)
    return EXIT_WRITTEN


def _why(preview: pb.SeriesPreview) -> str:
    if preview.failure_detail:
        return f"{preview.failure_reason} ({preview.failure_detail})"
    return preview.failure_reason or "none"


class _Client:
    """The calls this command makes, with gRPC errors turned into _Nothing / _Refused."""

    def __init__(self, config: WatchConfig) -> None:
        import grpc

        from seriesflow.receiver.client import channel_options, credentials, read_token
        from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

        token = read_token(config.store_token_file)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        creds = credentials(config.store_tls_ca, config.store_tls_cert, config.store_tls_key)
        options = channel_options(20.0, 10.0)
        address = config.store_address
        self._channel = (
            grpc.insecure_channel(address, options)
            if creds is None
            else grpc.secure_channel(address, creds, options)
        )
        self._stub = pb_grpc.SeriesStoreStub(self._channel)  # type: ignore[no-untyped-call]
        self._address = address

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        import grpc

        try:
            return method(request, timeout=_TIMEOUT, metadata=self._metadata)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.NOT_FOUND:
                raise _Nothing(details) from None
            hint = {
                grpc.StatusCode.UNAVAILABLE: f"is the store at {self._address} running?",
                grpc.StatusCode.UNAUTHENTICATED: "give a token with the read scope in"
                " --store-token-file (SERIESFLOW_STORE_TOKEN_FILE)",
                grpc.StatusCode.PERMISSION_DENIED: "the token has no read scope: use one listed"
                " in the store's SERIESFLOW_GRPC_READ_TOKENS_FILE",
                grpc.StatusCode.UNIMPLEMENTED: "this store does not serve previews: upgrade it",
            }.get(code, "see the store's log")
            raise _Refused(f"{code.name}: {details}; {hint}") from None

    def preview(self, series_uid: str) -> pb.SeriesPreview:
        from seriesflow.v1 import series_store_pb2 as pb

        request = pb.GetSeriesPreviewRequest(series_instance_uid=series_uid)
        return self._call(self._stub.GetSeriesPreview, request)  # type: ignore[no-any-return]

    def study(self, study_uid: str) -> pb.GetStudyResponse:
        from seriesflow.v1 import series_store_pb2 as pb

        request = pb.GetStudyRequest(study_instance_uid=study_uid)
        return self._call(self._stub.GetStudy, request)  # type: ignore[no-any-return]


def contact_sheet(client: _Client, study_uid: str) -> tuple[bytes, int]:
    """The study's contact sheet as PNG bytes, and how many series it shows."""
    study = client.study(study_uid)
    if not study.series:
        raise _Nothing(f"study {study_uid} has no series")
    tiles = [(series, client.preview(series.series_instance_uid)) for series in study.series]
    return render_sheet(study.study, tiles), len(tiles)


def render_sheet(study: pb.Study, tiles: list[tuple[pb.Series, pb.SeriesPreview]]) -> bytes:
    """A grid of TILE x TILE previews with captions, as PNG bytes."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    columns = min(_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    title_height = 24
    cell_w, cell_h = TILE + _GAP, TILE + _CAPTION + _GAP
    sheet = Image.new(
        "RGB", (columns * cell_w + _GAP, title_height + rows * cell_h + _GAP), (17, 17, 17)
    )
    draw = ImageDraw.Draw(sheet)
    title = study.study_description or "(no study description)"
    _text(draw, (_GAP, 6), f"{title}  -  {study.study_instance_uid}", font)
    for index, (series, preview) in enumerate(tiles):
        x = _GAP + (index % columns) * cell_w
        y = title_height + (index // columns) * cell_h
        tile = _tile(preview)
        if tile is None:
            draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), fill=(48, 48, 48))
            _text(draw, (x + 8, y + TILE // 2 - 6), f"no preview: {_why(preview)}"[:40], font)
        else:
            sheet.paste(tile, (x + (TILE - tile.width) // 2, y + (TILE - tile.height) // 2))
        caption = [
            _fit(series.series_description or "(no description)"),
            f"{series.modality or '?'} - {series.num_instances} instances",
            _fit(series.series_instance_uid),
        ]
        for line_no, line in enumerate(caption):
            _text(draw, (x, y + TILE + 4 + 14 * line_no), line, font)
    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()


def _tile(preview: pb.SeriesPreview) -> Image.Image | None:
    """The preview scaled to fit the tile, as RGB; None when there is none (or it does not
    decode: the store checked only its signature)."""
    import io

    from PIL import Image, UnidentifiedImageError

    if not preview.png:
        return None
    try:
        decoded = Image.open(io.BytesIO(preview.png))
        decoded.load()
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    image = decoded.convert("RGB")
    image.thumbnail((TILE, TILE))
    return image


def _fit(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(draw: Any, xy: tuple[int, int], text: str, font: Any) -> None:
    """Draw a caption; Pillow's bitmap fallback font (without FreeType) encodes Latin-1
    only, so other text (a Japanese description) is then drawn with '?' instead."""
    try:
        draw.text(xy, text, fill=(220, 220, 220), font=font)
    except UnicodeEncodeError:
        safe = text.encode("latin-1", "replace").decode("latin-1")
        draw.text(xy, safe, fill=(220, 220, 220), font=font)
