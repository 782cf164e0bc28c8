"""One DICOM image rendered to a small PNG: the series preview.

A pure function of a file: `render(path)` decodes ONE frame (the middle one of a
multi-frame), applies the grayscale pipeline of PS3.3 C.11 (modality LUT → VOI LUT or
window → MONOCHROME1 inversion) or the colour conversions (palette, YBR → RGB), corrects a
non-square pixel aspect ratio and downscales so the longest side is at most `max_side`.
It never raises: every failure is a NotRendered with a reason from a small vocabulary and
a detail that names what failed, never a patient attribute.

The receiver keeps a dataset as it arrived: no preamble or file meta, encoded in the
negotiated transfer syntax, a deflated one already inflated (receiver.incoming); such a
file needs `transfer_syntax_uid`. A DICOM file with a meta header is read as usual.

Decoding goes through pydicom's pixel-data plugins, reading only the chosen frame from the
file (a native frame is read at its offset, an encapsulated one from its fragments), so a
1 GB multi-frame costs one frame of memory. The caller runs this in a worker process.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filereader import read_dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

_log = logging.getLogger(__name__)

NotRenderedReason = Literal["no_pixel_data", "undecodable", "unsupported", "too_large", "failed"]

# One frame above this many pixels is refused before decoding: its float working copy
# alone would be ~0.5 GB.
MAX_FRAME_PIXELS = 64 * 1024 * 1024
# A deflated file with a meta header can only be inflated as a whole: bound that too.
_MAX_DEFLATED_PIXEL_BYTES = 512 * 1024 * 1024
# The robust window when the file names none: these percentiles of the non-padding pixels.
PERCENTILES = (0.5, 99.5)
# Percentiles are estimated from at most this many pixels (a regular subsample).
_PERCENTILE_SAMPLE = 1 << 20

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_RGB_LIKE = frozenset(
    {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422"}
)
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})


@dataclass(frozen=True)
class Rendered:
    """A PNG (8-bit "L" or "RGB") of one frame and what was done to make it."""

    png: bytes
    width: int
    height: int
    frame: int  # 0-based index of the rendered frame
    window: str  # in words: which VOI transformation gave the grey levels
    window_center: float | None
    window_width: float | None


@dataclass(frozen=True)
class NotRendered:
    """Why there is no preview. `reason` is one of NotRenderedReason; `detail` is short and
    names no patient data."""

    reason: NotRenderedReason
    detail: str


class _Refused(Exception):
    def __init__(self, reason: NotRenderedReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Source:
    header: Dataset  # everything before the pixel data
    transfer_syntax_uid: UID  # how the pixel data element is encoded in the file
    has_meta: bool
    deflated_with_meta: bool


def render(
    path: Path, max_side: int = 256, transfer_syntax_uid: str | None = None
) -> Rendered | NotRendered:
    """Render the middle frame of the DICOM image at `path` to a PNG whose longest side is
    at most `max_side`. `transfer_syntax_uid` is needed when the file has no meta header
    (a dataset as the receiver stores it); a meta header's own value wins."""
    try:
        with warnings.catch_warnings():
            # pydicom warns about every odd value; a preview does not care.
            warnings.simplefilter("ignore")
            return _render(Path(path), max(1, int(max_side)), transfer_syntax_uid)
    except _Refused as exc:
        return NotRendered(exc.reason, exc.detail)
    except MemoryError:
        return NotRendered("too_large", "out of memory while rendering")
    except Exception as exc:  # never raise: a preview is best effort
        _log.warning(
            "preview rendering failed",
            extra={"fields": {"path": str(path), "error": type(exc).__name__}},
        )
        return NotRendered("failed", f"{type(exc).__name__} while rendering")


def _render(path: Path, max_side: int, transfer_syntax_uid: str | None) -> Rendered:
    source = _read_source(path, transfer_syntax_uid)
    ds = source.header
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    samples = _int(ds, "SamplesPerPixel", 1)
    bits_allocated = _int(ds, "BitsAllocated")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if rows <= 0 or columns <= 0:
        raise _Refused("unsupported", "image has no Rows/Columns")
    if rows * columns > MAX_FRAME_PIXELS:
        raise _Refused("too_large", f"one frame is {rows}x{columns} pixels")
    if bits_allocated not in (1, 8, 16, 32, 64):
        raise _Refused("unsupported", f"BitsAllocated {bits_allocated}")
    if photometric not in _MONOCHROME | _RGB_LIKE | {"PALETTE COLOR"}:
        raise _Refused("unsupported", f"PhotometricInterpretation {photometric or '(none)'}")
    frames = max(1, _int(ds, "NumberOfFrames", 1))
    frame = (frames - 1) // 2

    raw = _decode(path, source, frame, frames)
    if raw.shape[:2] != (rows, columns):
        raise _Refused("undecodable", f"decoded shape {raw.shape} is not {rows}x{columns}")

    if photometric == "PALETTE COLOR" and samples == 1:
        image = _palette(raw, ds)
        window, center, width = "palette colour LUT", None, None
    elif samples == 3 and raw.ndim == 3:
        # pydicom's decoders return RGB for YBR_* (and the JPEG 2000 codecs undo ICT/RCT).
        image = Image.fromarray(_to_uint8_rgb(raw, ds), mode="RGB")
        window, center, width = "none (colour)", None, None
    elif samples == 1 and raw.ndim == 2:
        grey, window, center, width = _grey(raw, ds, frame, photometric)
        image = Image.fromarray(grey, mode="F")
    else:
        raise _Refused("unsupported", f"SamplesPerPixel {samples} with {photometric}")

    size = _output_size(rows, columns, _aspect(ds, frame), max_side)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return Rendered(buffer.getvalue(), size[0], size[1], frame, window, center, width)


# -- reading ---------------------------------------------------------------------------


def _read_source(path: Path, transfer_syntax_uid: str | None) -> _Source:
    try:
        with open(path, "rb") as stream:
            preamble = stream.read(132)
            has_meta = len(preamble) == 132 and preamble[128:] == b"DICM"
            stream.seek(0)
            header: Dataset
            if has_meta:
                header = dcmread(stream, stop_before_pixels=True)
                syntax = header.file_meta.get("TransferSyntaxUID") or transfer_syntax_uid
                if not syntax:
                    raise _Refused("unsupported", "file meta has no TransferSyntaxUID")
                deflated = UID(syntax) == DeflatedExplicitVRLittleEndian
                if deflated:
                    return _Source(header, UID(syntax), True, True)
            elif transfer_syntax_uid:
                syntax = transfer_syntax_uid
                header = _read_bare(stream, UID(syntax))
            else:
                # Neither meta nor caller names the syntax: let pydicom guess the encoding
                # (right for native data; encapsulated pixel data then fails to decode).
                header = dcmread(stream, stop_before_pixels=True, force=True)
                syntax = _guessed_syntax(header)
            at_pixels = _next_tag(stream, UID(syntax)) in _PIXEL_TAGS
    except (_Refused, MemoryError):
        raise
    except Exception as exc:
        raise _Refused("undecodable", f"header unreadable ({type(exc).__name__})") from None
    if not at_pixels:
        raise _Refused("no_pixel_data", f"no pixel data ({_sop_class_name(header)})")
    return _Source(header, UID(syntax), has_meta, False)


def _read_bare(stream: BinaryIO, syntax: UID) -> Dataset:
    # A bare dataset from the receiver; a deflated one was inflated on arrival.
    if syntax == DeflatedExplicitVRLittleEndian:
        syntax = ExplicitVRLittleEndian
    if not syntax.is_transfer_syntax:
        raise _Refused("unsupported", f"unknown transfer syntax {syntax}")
    return read_dataset(
        stream,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS,
    )


def _guessed_syntax(header: Dataset) -> UID:
    implicit, little = header.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _next_tag(stream: BinaryIO, syntax: UID) -> int | None:
    """The tag at the stream's position (where pydicom stopped before the pixel data)."""
    data = stream.read(4)
    if len(data) < 4:
        return None
    order: Literal["little", "big"] = "little" if syntax.is_little_endian else "big"
    group = int.from_bytes(data[:2], order)
    element = int.from_bytes(data[2:], order)
    return (group << 16) | element


def _sop_class_name(ds: Dataset) -> str:
    value = ds.get("SOPClassUID")
    return UID(str(value)).name if value else "no SOP class"


def _decode(path: Path, source: _Source, frame: int, frames: int) -> npt.NDArray[Any]:
    ds = source.header
    try:
        if source.deflated_with_meta:
            expected = _int(ds, "Rows") * _int(ds, "Columns") * frames
            expected *= _int(ds, "SamplesPerPixel", 1) * max(1, _int(ds, "BitsAllocated") // 8)
            if expected > _MAX_DEFLATED_PIXEL_BYTES:
                raise _Refused("too_large", f"deflated pixel data of {expected} bytes")
            full = dcmread(path)
            if "PixelData" not in full and "FloatPixelData" not in full:
                raise _Refused("no_pixel_data", "no pixel data")
            return np.asarray(pixel_array(full, index=frame))
        options: dict[str, Any] = {}
        syntax = source.transfer_syntax_uid
        if not source.has_meta:
            # The receiver's copy of a deflated dataset is already inflated.
            if syntax == DeflatedExplicitVRLittleEndian:
                syntax = ExplicitVRLittleEndian
            options["transfer_syntax_uid"] = syntax
        elif not source.header.file_meta.get("TransferSyntaxUID"):
            options["transfer_syntax_uid"] = syntax
        if syntax == JPEGExtended12Bit and _int(ds, "BitsStored", 8) > 8:
            return _decode_jpeg12(path, source, frame, frames)
        return np.asarray(pixel_array(path, index=frame, **options))
    except (_Refused, MemoryError):
        raise
    except NotImplementedError as exc:
        raise _Refused("unsupported", _short(exc)) from None
    except Exception as exc:
        raise _Refused("undecodable", _short(exc)) from None


def _decode_jpeg12(path: Path, source: _Source, frame: int, frames: int) -> npt.NDArray[Any]:
    """12-bit JPEG Extended through GDCM itself.

    pydicom's GDCM plugin refuses 12-bit JPEG and its other 12-bit decoder is GPL
    (pylibjpeg-libjpeg), but GDCM's own IJG 12-bit codec decodes it (checked against dcmtk's
    dcmdjpeg: identical). GDCM reads whole files, so the one frame is copied into a small
    DICOM file of its own first: memory stays one frame, and a bare dataset works too."""
    import gdcm  # type: ignore[import-untyped]  # python-gdcm; imported here since only this rare path needs it

    ds = source.header
    with open(path, "rb") as stream:
        header = dcmread(stream, stop_before_pixels=True) if source.has_meta else None
        if header is None:
            _read_bare(stream, source.transfer_syntax_uid)
        if _next_tag(stream, source.transfer_syntax_uid) != 0x7FE00010:
            raise _Refused("undecodable", "no encapsulated pixel data")
        stream.read(8)  # VR, reserved, undefined length
        codestream = get_frame(stream, frame, number_of_frames=frames)
    single = Dataset()
    for element in ds.group_dataset(0x0028):
        single.add(element)
    single.NumberOfFrames = 1
    single.SOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    single.SOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    single.PixelData = encapsulate([codestream])
    single["PixelData"].VR = "OB"
    single.file_meta = FileMetaDataset()
    single.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    with tempfile.TemporaryDirectory(prefix="seriesflow-render-") as folder:
        one = Path(folder) / "frame.dcm"
        single.save_as(one, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(one))
        if not reader.Read():
            raise _Refused("undecodable", "GDCM cannot read the 12-bit JPEG frame")
        image = reader.GetImage()
        buffer = image.GetBuffer()
    data = buffer.encode("utf-8", "surrogateescape")  # python-gdcm's bytes-as-str
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if len(data) != rows * columns * 2:
        raise _Refused("undecodable", f"GDCM returned {len(data)} bytes for {rows}x{columns}")
    signed = _int(ds, "PixelRepresentation") == 1
    array = np.frombuffer(data, dtype="<i2" if signed else "<u2").reshape(rows, columns)
    return array.copy()


def _short(exc: BaseException) -> str:
    # pydicom's pixel errors name lengths, syntaxes and plugins, never attribute values.
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


# -- grey levels -----------------------------------------------------------------------


def _grey(
    raw: npt.NDArray[Any], ds: Dataset, frame: int, photometric: str
) -> tuple[npt.NDArray[np.float32], str, float | None, float | None]:
    """Stored values → display values in [0, 255] (float, for resampling)."""
    padding = _padding_mask(raw, ds)
    values = _modality(raw, ds, frame)
    voi = _voi_lut(values, ds, frame)
    if voi is not None:
        display, window, center, width = voi, "VOI LUT", None, None
    else:
        display, window, center, width = _windowed(values, ds, frame, padding)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    if padding is not None:
        # Padding is "no image here": black, whichever the polarity.
        display = np.where(padding, 0.0, display)
    return (display * 255.0).astype(np.float32), window, center, width


def _padding_mask(raw: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.bool_] | None:
    value = ds.get("PixelPaddingValue")
    if not isinstance(value, int):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if isinstance(limit, int):
        low, high = min(value, limit), max(value, limit)
        mask: npt.NDArray[np.bool_] = (raw >= low) & (raw <= high)
    else:
        mask = raw == value
    return mask if mask.any() else None


def _modality(raw: npt.NDArray[Any], ds: Dataset, frame: int) -> npt.NDArray[np.float64]:
    transformation = _functional_item(ds, frame, "PixelValueTransformationSequence")
    if transformation is not None and "RescaleSlope" in transformation:
        slope = float(transformation.RescaleSlope)
        intercept = float(transformation.get("RescaleIntercept", 0.0))
        return raw.astype(np.float64) * slope + intercept
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    return raw.astype(np.float64)


def _voi_lut(values: npt.NDArray[np.float64], ds: Dataset, frame: int) -> Any:
    if "VOILUTSequence" not in ds or not ds.VOILUTSequence:
        return None
    item = ds.VOILUTSequence[0]
    descriptor = item.get("LUTDescriptor")
    if not descriptor or len(descriptor) != 3 or "LUTData" not in item:
        return None
    # apply_voi maps integer inputs through the table (clamping outside its range).
    out = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    entries, first, bits = (int(v) for v in descriptor)
    table = apply_voi(np.arange(first, first + (entries or 65536), dtype=np.int64), ds, index=0)
    top = float(np.max(table))
    # Some writers state 16 bits for 12-bit table entries: scale by what the table holds.
    scale = float(2**bits - 1) if top > 2 ** (bits - 4) else max(top, 1.0)
    return np.clip(np.asarray(out, dtype=np.float64) / scale, 0.0, 1.0)


def _windowed(
    values: npt.NDArray[np.float64],
    ds: Dataset,
    frame: int,
    padding: npt.NDArray[np.bool_] | None,
) -> tuple[npt.NDArray[np.float64], str, float, float]:
    voi_item = _functional_item(ds, frame, "FrameVOILUTSequence") or ds
    center, width = _first(voi_item.get("WindowCenter")), _first(voi_item.get("WindowWidth"))
    function = str(voi_item.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    minimum_width = 1.0 if function == "LINEAR" else 0.0
    if center is not None and width is not None and width > minimum_width:
        label = f"WindowCenter/WindowWidth {_num(center)}/{_num(width)} {function}"
        return _apply_window(values, center, width, function), label, center, width
    sample = values if padding is None else values[~padding]
    if sample.size == 0:
        sample = values
    sample = sample.ravel()
    if sample.size > _PERCENTILE_SAMPLE:
        sample = sample[:: math.ceil(sample.size / _PERCENTILE_SAMPLE)]
    low, high = (float(v) for v in np.percentile(sample, PERCENTILES))
    if high <= low:
        high = low + 1.0
    center, width = (low + high) / 2.0, high - low
    label = f"percentiles {_num(PERCENTILES[0])}-{_num(PERCENTILES[1])}"
    return _apply_window(values, center, width, "LINEAR_EXACT"), label, center, width


def _apply_window(
    values: npt.NDArray[np.float64], center: float, width: float, function: str
) -> npt.NDArray[np.float64]:
    """PS3.3 C.11.2.1.2 with the output range [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    # LINEAR: x <= c - 0.5 - (w-1)/2 → 0; x > c - 0.5 + (w-1)/2 → 1; else linear.
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        if value is None:
            return None
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _num(value: float) -> str:
    return f"{value:g}"


def _functional_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The item of `keyword` for `frame` in an enhanced multi-frame's functional groups
    (per-frame first, then shared), or None for a classic image."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        sequence = ds.get(groups)
        if sequence and len(sequence) > index:
            inner = sequence[index].get(keyword)
            if inner:
                item: Dataset = inner[0]
                return item
    return None


# -- colour ----------------------------------------------------------------------------


def _palette(raw: npt.NDArray[Any], ds: Dataset) -> Image.Image:
    rgb = np.asarray(apply_color_lut(raw, ds))
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    if bits > 8:
        rgb = rgb / 257.0 if rgb.max() > 255 else rgb
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mode="RGB")


def _to_uint8_rgb(raw: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.uint8]:
    stored = _int(ds, "BitsStored", _int(ds, "BitsAllocated", 8))
    if raw.dtype == np.uint8:
        return raw
    top = float(2 ** min(stored, 32) - 1)
    return np.clip(np.rint(raw.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


# -- geometry --------------------------------------------------------------------------


def _aspect(ds: Dataset, frame: int) -> float:
    """Height of a pixel over its width (1.0 when unknown or implausible)."""
    measures = _functional_item(ds, frame, "PixelMeasuresSequence")
    candidates = [
        measures.get("PixelSpacing") if measures is not None else None,
        ds.get("PixelSpacing"),
        ds.get("ImagerPixelSpacing"),
        ds.get("PixelAspectRatio"),
    ]
    for value in candidates:
        try:
            if value is None or len(value) != 2:
                continue
            vertical, horizontal = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
        if vertical > 0 and horizontal > 0 and 0.1 <= vertical / horizontal <= 10:
            return vertical / horizontal
    return 1.0


def _output_size(rows: int, columns: int, aspect: float, max_side: int) -> tuple[int, int]:
    """(width, height): square display pixels, stretched only along the axis of the larger
    spacing, then shrunk (never grown) to fit `max_side`."""
    width, height = float(columns), float(rows)
    if aspect > 1.0:
        height *= aspect
    elif aspect < 1.0:
        width /= aspect
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    value = ds.get(keyword)
    try:
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default
