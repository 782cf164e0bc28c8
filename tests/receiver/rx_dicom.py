"""Test DICOM made on the fly with pydicom: small images, chosen charsets and syntaxes."""

from __future__ import annotations

import dataclasses
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ROOT = "1.2.826.0.1.3680043.10.1337."  # test UIDs; generate_uid adds a random suffix


def uid() -> str:
    return generate_uid(prefix=ROOT)


@dataclasses.dataclass
class SeriesSpec:
    study_uid: str = dataclasses.field(default_factory=uid)
    series_uid: str = dataclasses.field(default_factory=uid)
    patient_id: str = "PAT-1"
    patient_name: str = "Doe^Jane"
    modality: str = "CT"
    size: int = 8  # rows = columns
    bits: int = 16


def instance(spec: SeriesSpec, number: int, sop_uid: str | None = None) -> Dataset:
    """One image of the series, explicit VR little endian, with file meta."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid or uid()
    ds.StudyDate = "20240131"
    ds.StudyTime = "101500"
    ds.Modality = spec.modality
    ds.Manufacturer = "seriesflow-tests"
    ds.StudyDescription = "test study"
    ds.SeriesDescription = "test series"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = spec.size
    ds.BitsAllocated = ds.BitsStored = spec.bits
    ds.HighBit = spec.bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = bytes([number % 256]) * (spec.size * spec.size * spec.bits // 8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def series(spec: SeriesSpec, count: int) -> list[Dataset]:
    return [instance(spec, n + 1) for n in range(count)]


def encode(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The dataset as it travels in a C-STORE (no file meta), in `transfer_syntax`."""
    out = DicomBytesIO()
    out.is_little_endian = transfer_syntax != ExplicitVRBigEndian
    out.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(out, ds)
    raw = out.getvalue()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = compressor.compress(raw) + compressor.flush()
    return raw


def write_files(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def write_raw_file(folder: Path, name: str, meta: FileMetaDataset, body: bytes) -> Path:
    """A Part 10 file whose dataset bytes are exactly `body` (possibly broken)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    shell = Dataset()
    shell.file_meta = meta
    dcmwrite(buffer, shell, enforce_file_format=True)
    path = folder / name
    path.write_bytes(buffer.getvalue() + body)
    return path


def sample(name: str) -> Dataset:
    """A file shipped inside pydicom (test_files or charset_files), read fully."""
    found = get_testdata_file(name)
    if found is None:
        matches = get_charset_files(name)
        found = matches[0] if matches else None
    if found is None:
        raise FileNotFoundError(f"pydicom does not ship {name}")
    return dcmread(str(found))


def charset_instances() -> Iterator[tuple[Dataset, str]]:
    """(dataset, expected PatientName) in Latin-1, UTF-8 and ISO 2022 IR 87 Japanese."""
    spec = SeriesSpec()
    latin = instance(spec, 1)
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.PatientName = "Müller^Zoë"
    yield latin, "Müller^Zoë"
    utf8 = instance(spec, 2)
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = "Иванов^Пётр"
    yield utf8, "Иванов^Пётр"
    japanese = sample("chrH31.dcm")  # ISO 2022 IR 87 with ideographic/phonetic groups
    expected = str(japanese.PatientName)
    yield japanese, expected
