"""Series previews: our PNG against dcmtk's rendering of the same file with the same window.

dcmtk (dcm2pnm / dcmj2pnm / dcml2pnm) is an independent implementation of the PS3.3 C.11
pipeline and of JPEG, JPEG-LS, RLE and deflate decoding; its picture is resized to ours and
compared by PSNR and normalised cross-correlation. dcmtk cannot decode JPEG 2000: for those
files the reference is dcmtk's rendering of the pixels decoded by a different plugin than
the one the renderer uses (pylibjpeg-openjpeg instead of GDCM), or of the lossless
original. Files come from pydicom's own test data or are made here with pydicom/dcmtk.
"""

from __future__ import annotations

import io
import subprocess
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from conftest import require_tool
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from seriesflow.receiver.render import NotRendered, Rendered, render

# Same window, same size, two implementations: measured 51-62 dB (identical for 8-bit
# colour) and NCC > 0.9999 on these files; the margin covers rounding and codec versions.
MIN_PSNR = 40.0
MIN_NCC = 0.995
REASONS = {"no_pixel_data", "undecodable", "unsupported", "too_large", "failed"}


def _data(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, f"{name} is not shipped with pydicom"
    return Path(str(found))


def _rendered(path: Path, **kwargs: object) -> Rendered:
    result = render(path, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Rendered), result
    return result


def _pixels(result: Rendered) -> npt.NDArray[np.float64]:
    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG"
    assert image.mode in ("L", "RGB")
    assert image.size == (result.width, result.height)
    return np.asarray(image, dtype=np.float64)


def _dcmtk(tool: str, source: Path, folder: Path, *options: str) -> Image.Image:
    out = folder / f"dcmtk-{len(list(folder.iterdir()))}.png"
    subprocess.run(
        [require_tool(tool), "+on", "-O", *options, str(source), str(out)],
        check=True,
        capture_output=True,
    )
    return Image.open(out)


def _window_options(result: Rendered, how: str) -> list[str]:
    if how == "file":
        return ["+Wi", "1"]
    if how == "ours":  # the renderer's own (percentile) window, applied by dcmtk
        assert result.window_center is not None and result.window_width is not None
        return ["+Ww", repr(result.window_center), repr(result.window_width)]
    return []


def _similarity(result: Rendered, reference: Image.Image) -> tuple[float, float]:
    ours = _pixels(result)
    mode = "RGB" if ours.ndim == 3 else "L"
    ref_image = reference.convert(mode)
    if ref_image.size != (result.width, result.height):
        ref_image = ref_image.resize((result.width, result.height), Image.Resampling.LANCZOS)
    ref = np.asarray(ref_image, dtype=np.float64)
    mse = float(np.mean((ours - ref) ** 2))
    psnr = 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)
    a, b = ours - ours.mean(), ref - ref.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    ncc = 1.0 if denominator == 0 else float((a * b).sum() / denominator)
    return psnr, ncc


def _assert_similar(result: Rendered, reference: Image.Image, min_psnr: float = MIN_PSNR) -> None:
    psnr, ncc = _similarity(result, reference)
    assert psnr >= min_psnr and ncc >= MIN_NCC, f"PSNR {psnr:.1f} dB, NCC {ncc:.4f}"


def _save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct_image(
    pixels: npt.NDArray[np.int16], **attributes: object
) -> Dataset:  # a minimal signed 16-bit CT image
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def _ramp(rows: int = 64, columns: int = 64) -> npt.NDArray[np.int16]:
    y, x = np.mgrid[0:rows, 0:columns]
    ramp: npt.NDArray[np.int16] = (x * 40 + y * 20 - 1024).astype(np.int16)
    return ramp  # HU from -1024 upwards


# -- golden images -----------------------------------------------------------------------

GOLDEN = [
    # file, dcmtk tool, window used by the reference
    ("CT_small.dcm", "dcm2pnm", "ours"),  # signed 16-bit, RescaleIntercept -1024, no window
    ("MR_small.dcm", "dcm2pnm", "file"),
    ("MR_small_implicit.dcm", "dcm2pnm", "file"),
    ("MR_small_bigendian.dcm", "dcm2pnm", "file"),
    ("MR_small_RLE.dcm", "dcmj2pnm", "file"),
    ("MR_small_jpeg_ls_lossless.dcm", "dcml2pnm", "file"),
    ("JPEGLSNearLossless_16.dcm", "dcml2pnm", "ours"),
    ("JPGExtended.dcm", "dcmj2pnm", "ours"),  # 12-bit JPEG extended, BitsStored 12 of 16
    ("JPEG-lossy.dcm", "dcmj2pnm", "ours"),
    ("SC_rgb_jpeg_dcmtk.dcm", "dcmj2pnm", "none"),  # baseline, YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "dcmj2pnm", "none"),  # baseline, YBR_FULL_422
    ("SC_rgb_jpeg_gdcm.dcm", "dcmj2pnm", "none"),  # JPEG lossless SV1, RGB
    ("SC_rgb_rle.dcm", "dcmj2pnm", "none"),
    ("SC_rgb_rle_16bit.dcm", "dcmj2pnm", "none"),
    ("SC_ybr_full_422_uncompressed.dcm", "dcm2pnm", "none"),
    ("examples_rgb_color.dcm", "dcm2pnm", "none"),
    ("examples_palette.dcm", "dcm2pnm", "none"),
    ("examples_overlay.dcm", "dcm2pnm", "file"),  # BitsStored 12, first of two windows
    ("image_dfl.dcm", "dcm2pnm", "ours"),  # deflated
    ("ExplVR_BigEnd.dcm", "dcm2pnm", "none"),  # RGB, big endian
]


@pytest.mark.parametrize(("name", "tool", "window"), GOLDEN)
def test_preview_matches_dcmtk_rendering(name: str, tool: str, window: str, tmp_path: Path) -> None:
    path = _data(name)
    result = _rendered(path)
    reference = _dcmtk(tool, path, tmp_path, *_window_options(result, window))
    _assert_similar(result, reference)


def test_first_window_of_several_is_used_and_named() -> None:
    result = _rendered(_data("examples_overlay.dcm"))  # WindowCenter [450, 200]
    assert result.window == "WindowCenter/WindowWidth 450/790 LINEAR"
    assert (result.window_center, result.window_width) == (450.0, 790.0)


@pytest.mark.parametrize(
    ("name", "lossless_original"),
    [
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("693_J2KI.dcm", None),  # signed CT, BitsStored 14, lossy
        ("GDCMJ2K_TextGBR.dcm", None),  # YBR_RCT
        ("examples_jpeg2k.dcm", None),  # YBR_RCT
        ("JPEG2000.dcm", None),
    ],
)
def test_jpeg2000_preview_matches_dcmtk_rendering_of_independently_decoded_pixels(
    name: str, lossless_original: str | None, tmp_path: Path
) -> None:
    path = _data(name)
    result = _rendered(path)
    if lossless_original is not None:
        reference_file = _data(lossless_original)
    else:
        ds = dcmread(path)
        ds.decompress(decoding_plugin="pylibjpeg")  # OpenJPEG via pylibjpeg, not GDCM
        reference_file = tmp_path / "decoded.dcm"
        ds.save_as(reference_file)
    how = "ours" if result.window.startswith("percentiles") else "file"
    if result.window_center is None:
        how = "none"
    reference = _dcmtk("dcm2pnm", reference_file, tmp_path, *_window_options(result, how))
    _assert_similar(result, reference)


@pytest.mark.parametrize("option", ["+e1", "+el"])  # JPEG lossless SV1 and other predictors
def test_jpeg_lossless_grey_preview_matches_dcmtk(option: str, tmp_path: Path) -> None:
    compressed = tmp_path / "ct_lossless.dcm"
    subprocess.run(
        [require_tool("dcmcjpeg"), option, str(_data("CT_small.dcm")), str(compressed)],
        check=True,
        capture_output=True,
    )
    assert dcmread(compressed).file_meta.TransferSyntaxUID.name.startswith("JPEG Lossless")
    result = _rendered(compressed)
    reference = _dcmtk("dcmj2pnm", compressed, tmp_path, *_window_options(result, "ours"))
    _assert_similar(result, reference)
    same = _rendered(_data("CT_small.dcm"))  # lossless: the same picture as uncompressed
    assert np.array_equal(_pixels(result), _pixels(same))


def test_monochrome1_is_inverted_like_dcmtk(tmp_path: Path) -> None:
    ds = dcmread(_data("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    del ds.PixelPaddingValue  # keep the comparison to the transfer function alone
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    result = _rendered(path)
    reference = _dcmtk("dcm2pnm", path, tmp_path, *_window_options(result, "ours"))
    _assert_similar(result, reference)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "mono2.dcm")
    normal = _rendered(tmp_path / "mono2.dcm")
    assert np.abs(_pixels(result) - (255 - _pixels(normal))).max() <= 1


# -- the pipeline, step by step -------------------------------------------------------------


def test_signed_pixels_go_through_rescale_intercept_and_window(tmp_path: Path) -> None:
    stored = np.full((16, 16), -1024, dtype=np.int16)  # HU -2048: far below the window
    stored[:, 8:] = 1064  # HU 40: the window centre, mid grey
    stored[8:, :] = 2000  # HU 976: far above, white
    ds = _ct_image(stored, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40)
    ds.WindowWidth = 400
    path = _save(ds, tmp_path / "signed.dcm")
    result = _rendered(path)
    assert result.window == "WindowCenter/WindowWidth 40/400 LINEAR"
    grey = _pixels(result)
    assert grey[0, 0] == 0 and abs(grey[0, 15] - 128) <= 1 and grey[15, 0] == 255
    reference = _dcmtk("dcm2pnm", path, tmp_path, "+Wi", "1")
    assert np.abs(grey - np.asarray(reference, dtype=np.float64)).max() <= 1


def test_padding_value_is_left_out_of_the_percentile_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    stored = rng.integers(1000, 1200, size=(64, 64)).astype(np.int16)
    stored[:, :40] = -2000  # most of the frame is padding (outside the scanner's circle)
    ds = _ct_image(stored, RescaleIntercept=-1024, RescaleSlope=1, PixelPaddingValue=-2000)
    path = _save(ds, tmp_path / "padded.dcm")
    result = _rendered(path)
    assert result.window == "percentiles 0.5-99.5"
    low, high = np.percentile(stored[:, 40:].astype(np.float64) - 1024, [0.5, 99.5])
    assert result.window_center == pytest.approx((low + high) / 2)
    assert result.window_width == pytest.approx(high - low)
    # the image keeps its contrast instead of being squashed into one grey
    assert np.std(_pixels(result)[:, 42:]) > 40
    reference = _dcmtk("dcm2pnm", path, tmp_path, *_window_options(result, "ours"))
    _assert_similar(result, reference)


def test_padding_range_limit_is_left_out_too(tmp_path: Path) -> None:
    stored = np.tile(np.arange(0, 64, dtype=np.int16) * 10, (64, 1))  # 0..630
    stored[:, :20] = np.arange(-3000, -2980).astype(np.int16)  # a range of padding values
    ds = _ct_image(stored, PixelPaddingValue=-3000, PixelPaddingRangeLimit=-2950)
    result = _rendered(_save(ds, tmp_path / "range.dcm"))
    assert result.window_center is not None and result.window_width is not None
    assert result.window_center - result.window_width / 2 > 150  # padding not in the window


def test_sigmoid_voi_function_matches_dcmtk(tmp_path: Path) -> None:
    ds = dcmread(_data("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 400, "SIGMOID"
    path = tmp_path / "sigmoid.dcm"
    ds.save_as(path)
    result = _rendered(path)
    assert result.window == "WindowCenter/WindowWidth 40/400 SIGMOID"
    reference = _dcmtk("dcm2pnm", path, tmp_path, "+Ww", "40", "400", "+Wfs")
    _assert_similar(result, reference)
    ds.VOILUTFunction = "LINEAR"
    ds.save_as(path)
    linear = _rendered(path)
    assert np.abs(_pixels(linear) - _pixels(result)).max() > 20  # the function matters


def test_linear_exact_follows_its_formula(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 150, 200, 300]], dtype=np.int16)
    ds = _ct_image(stored, WindowCenter=150, WindowWidth=100, VOILUTFunction="LINEAR_EXACT")
    grey = _pixels(_rendered(_save(ds, tmp_path / "exact.dcm")))
    # (x - c) / w + 0.5 clipped to [0, 1]: 0, 0, 0.5, 1, 1
    assert grey.ravel().tolist() == [0, 0, 128, 255, 255]


def test_voi_lut_sequence_matches_dcmtk(tmp_path: Path) -> None:
    ds = dcmread(_data("CT_small.dcm"))
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    item = Dataset()
    entries = 2048
    item.add_new(0x00283002, "SS", [entries, -1000, 12])  # inputs -1000 .. 1047 (HU)
    curve = np.sqrt(np.linspace(0, 1, entries)) * 4095  # a non-linear curve
    item.add_new(0x00283006, "OW", curve.astype("<u2").tobytes())
    ds.VOILUTSequence = [item]
    path = tmp_path / "voilut.dcm"
    ds.save_as(path)
    result = _rendered(path)
    assert result.window == "VOI LUT"
    reference = _dcmtk("dcm2pnm", path, tmp_path, "+Wl", "1")
    _assert_similar(result, reference)


# -- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "value", "size"),
    [
        ("PixelSpacing", [2.0, 1.0], (100, 200)),  # rows 2 mm apart: taller than wide
        ("PixelSpacing", [0.5, 1.0], (200, 100)),
        ("ImagerPixelSpacing", [1.5, 1.0], (100, 150)),
        ("PixelAspectRatio", [3, 2], (100, 150)),
    ],
)
def test_non_square_pixels_give_a_non_square_preview_like_dcmtk(
    attribute: str, value: list[float], size: tuple[int, int], tmp_path: Path
) -> None:
    ds = _ct_image(_ramp(100, 100), WindowCenter=500, WindowWidth=2000)
    setattr(ds, attribute, value)
    path = _save(ds, tmp_path / "aspect.dcm")
    result = _rendered(path)
    assert (result.width, result.height) == size
    # dcmtk scales x to our width and derives y from the same attribute
    reference = _dcmtk("dcm2pnm", path, tmp_path, "+Wi", "1", "+a", "+Sxv", str(size[0]))
    assert abs(reference.size[1] - size[1]) <= 1
    _assert_similar(result, reference)


@pytest.mark.parametrize("max_side", [256, 100, 17])
def test_longest_side_is_at_most_max_side(max_side: int) -> None:
    result = _rendered(_data("examples_palette.dcm"), max_side=max_side)  # 800 x 350
    assert result.width == max_side
    assert result.height == round(350 * max_side / 800)


def test_small_images_are_not_upscaled() -> None:
    result = _rendered(_data("MR_small.dcm"), max_side=256)
    assert (result.width, result.height) == (64, 64)


def test_downscaling_averages_like_an_area_filter(tmp_path: Path) -> None:
    # dcmtk's own scaler interpolates without low-pass filtering (25 dB from an area
    # average on this CT); the reference is dcmtk's full-size picture averaged over 4x4
    # blocks with numpy, which is what a proper downscaling filter approximates.
    path = _data("693_J2KI.dcm")  # 512 x 512
    result = _rendered(path, max_side=128)
    assert (result.width, result.height) == (128, 128)
    ds = dcmread(path)
    ds.decompress(decoding_plugin="pylibjpeg")
    ds.save_as(tmp_path / "raw.dcm")
    full = np.asarray(_dcmtk("dcm2pnm", tmp_path / "raw.dcm", tmp_path, "+Wi", "1"), float)
    averaged = full.reshape(128, 4, 128, 4).mean(axis=(1, 3))
    reference = Image.fromarray(np.rint(averaged).astype(np.uint8), mode="L")
    # Lanczos is not a box: measured 37.5 dB (nearest-neighbour 24.7, dcmtk's scaler 26)
    _assert_similar(result, reference, min_psnr=34.0)


# -- multi-frame -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tool", "window", "frames"),
    [
        ("examples_ybr_color.dcm", "dcmj2pnm", "none", 30),  # JPEG baseline YBR_FULL_422
        ("rtdose.dcm", "dcm2pnm", "ours", 15),
        ("rtdose_rle.dcm", "dcmj2pnm", "ours", 15),
        ("SC_rgb_rle_2frame.dcm", "dcmj2pnm", "none", 2),
    ],
)
def test_multi_frame_renders_the_middle_frame(
    name: str, tool: str, window: str, frames: int, tmp_path: Path
) -> None:
    path = _data(name)
    result = _rendered(path, max_side=1024)
    middle = (frames - 1) // 2
    assert result.frame == middle
    options = _window_options(result, window)
    reference = _dcmtk(tool, path, tmp_path, *options, "+F", str(middle + 1))  # 1-based
    _assert_similar(result, reference)
    if frames > 2:  # and not another one
        first = _dcmtk(tool, path, tmp_path, *options, "+F", "1")
        assert _similarity(result, first)[0] < _similarity(result, reference)[0]


def test_multi_frame_decodes_only_its_middle_frame(tmp_path: Path) -> None:
    # Frame 2 of 5 is valid RLE; the other frames are garbage: decoding them would fail.
    good = dcmread(_data("MR_small_RLE.dcm"))
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(good.PixelData, number_of_frames=1))
    garbage = b"\x01\x00\x00\x00" + b"\xff" * 60
    good.PixelData = encapsulate([garbage, garbage, frame, garbage, garbage])
    good.NumberOfFrames = 5
    path = tmp_path / "five.dcm"
    good.save_as(path)
    result = _rendered(path)
    assert result.frame == 2
    _assert_similar(result, _dcmtk("dcm2pnm", _data("MR_small.dcm"), tmp_path, "+Wi", "1"))


# -- files as the receiver keeps them --------------------------------------------------------


def _bare(path: Path, folder: Path) -> tuple[Path, str]:
    """The dataset of a DICOM file without preamble and meta, as the receiver stores it."""
    ds = dcmread(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    raw = path.read_bytes()
    offset = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    body = raw[offset:]
    if syntax == DeflatedExplicitVRLittleEndian:
        body = zlib.decompress(body, -zlib.MAX_WBITS)  # the receiver inflates on arrival
    bare = folder / "bare.bin"
    bare.write_bytes(body)
    return bare, syntax


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "JPGExtended.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_jp2klossless.dcm",
    ],
)
def test_dataset_without_meta_renders_with_the_given_transfer_syntax(
    name: str, tmp_path: Path
) -> None:
    bare, syntax = _bare(_data(name), tmp_path)
    result = _rendered(bare, transfer_syntax_uid=syntax)
    assert result.png == _rendered(_data(name)).png


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["test-SR.dcm", "reportsi.dcm", "rtstruct.dcm", "rtplan.dcm", "waveform_ecg.dcm"]
)
def test_objects_without_pixels_are_not_rendered(name: str) -> None:
    result = render(_data(name))
    assert isinstance(result, NotRendered)
    assert result.reason == "no_pixel_data"


def test_truncated_pixel_data_is_undecodable() -> None:
    result = render(_data("MR_truncated.dcm"))
    assert isinstance(result, NotRendered) and result.reason == "undecodable"


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000, RLELossless])
def test_garbage_encapsulated_pixel_data_is_undecodable(syntax: str, tmp_path: Path) -> None:
    ds = _ct_image(np.zeros((32, 32), dtype=np.int16))
    ds.PatientName = "Secret^Patient"
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(range(256)) * 3])
    ds["PixelData"].VR = "OB"
    result = render(_save(ds, tmp_path / "garbage.dcm", syntax))
    assert isinstance(result, NotRendered) and result.reason == "undecodable"
    assert "Secret" not in result.detail and len(result.detail) < 300


def test_short_native_pixel_data_is_undecodable(tmp_path: Path) -> None:
    ds = _ct_image(np.zeros((32, 32), dtype=np.int16))
    ds.PixelData = b"\x00\x01" * 100  # 200 bytes for a 2048-byte frame
    result = render(_save(ds, tmp_path / "short.dcm"))
    assert isinstance(result, NotRendered) and result.reason == "undecodable"


@pytest.mark.parametrize("content", [b"", b"DICM", b"\x00" * 200, bytes(range(256)) * 40])
def test_non_dicom_files_never_raise(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    for syntax in (None, ExplicitVRLittleEndian, JPEGBaseline8Bit):
        result = render(path, transfer_syntax_uid=syntax)
        assert isinstance(result, NotRendered) and result.reason in REASONS


def test_missing_file_is_not_rendered(tmp_path: Path) -> None:
    result = render(tmp_path / "absent.dcm")
    assert isinstance(result, NotRendered) and result.reason in REASONS


def test_huge_frame_is_refused_before_decoding(tmp_path: Path) -> None:
    ds = _ct_image(np.zeros((2, 2), dtype=np.int16))
    ds.Rows, ds.Columns = 20000, 20000  # 400 Mpixels; the pixel data is never read
    result = render(_save(ds, tmp_path / "huge.dcm"))
    assert isinstance(result, NotRendered) and result.reason == "too_large"


def test_result_pickles_for_a_process_pool() -> None:
    import pickle

    result = _rendered(_data("CT_small.dcm"))
    assert pickle.loads(pickle.dumps(result)) == result


def test_modality_lut_sequence_matches_dcmtk(tmp_path: Path) -> None:
    ds = _ct_image(_ramp(64, 64) + 1024, WindowCenter=2000, WindowWidth=3000)
    item = Dataset()
    entries = 4096
    item.add_new(0x00283002, "US", [entries, 0, 16])
    table = (np.linspace(0, 1, entries) ** 2 * 4000).astype("<u2")  # a non-linear LUT
    item.add_new(0x00283006, "OW", table.tobytes())
    item.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [item]
    path = _save(ds, tmp_path / "mlut.dcm")
    result = _rendered(path)
    _assert_similar(result, _dcmtk("dcm2pnm", path, tmp_path, "+Wi", "1"))
    del ds.ModalityLUTSequence
    plain = _rendered(_save(ds, tmp_path / "plain.dcm"))
    assert np.abs(_pixels(plain) - _pixels(result)).max() > 20  # the LUT was applied


def test_enhanced_multi_frame_uses_the_middle_frames_functional_groups(tmp_path: Path) -> None:
    frames = np.stack([np.full((20, 20), 100 * (i + 1), dtype=np.int16) for i in range(3)])
    ds = _ct_image(frames[0])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype("<i2").tobytes()
    measures, shared = Dataset(), Dataset()
    measures.PixelSpacing = [2.0, 1.0]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for index in range(3):
        voi, transformation, group = Dataset(), Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = 1000 + index, 100
        transformation.RescaleSlope, transformation.RescaleIntercept = 1, 800
        group.FrameVOILUTSequence = [voi]
        group.PixelValueTransformationSequence = [transformation]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    result = _rendered(_save(ds, tmp_path / "enhanced.dcm"))
    assert result.frame == 1
    assert result.window == "WindowCenter/WindowWidth 1001/100 LINEAR"
    assert (result.width, result.height) == (20, 40)
    # stored 200 + 800 = 1000, just below the centre 1001 of a 100-wide window
    assert abs(_pixels(result)[0, 0] - 125.5) <= 1.5
