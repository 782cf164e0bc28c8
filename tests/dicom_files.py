"""Small, valid DICOM instances written with pydicom, for tests that send real files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)


@dataclass(frozen=True)
class WrittenSeries:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]


def ct_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    instance_number: int = 1,
    series_number: int = 1,
    size: int = 8,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A CT image with the identifiers given and a size x size 16-bit pixel matrix."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyDate = "20260115"
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT HEAD"
    ds.AccessionNumber = "ACC-1"
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"Axial {series_number}"
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "seriesflow-tests"
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * (size * size * 2 // 256) + bytes(size * size * 2 % 256)
    return ds


def write_study(
    folder: Path, series_sizes: list[int], *, patient_id: str = "PAT-1", size: int = 8
) -> list[WrittenSeries]:
    """One study with a series per entry of `series_sizes` (its instance count), as files."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    written = []
    for series_number, count in enumerate(series_sizes, start=1):
        series_uid = generate_uid()
        sops, files = [], []
        for number in range(1, count + 1):
            sop_uid = generate_uid()
            ds = ct_instance(
                study_uid,
                series_uid,
                sop_uid,
                patient_id=patient_id,
                instance_number=number,
                series_number=series_number,
                size=size,
            )
            path = folder / f"{series_number:03d}_{number:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sops.append(sop_uid)
            files.append(path)
        written.append(WrittenSeries(study_uid, series_uid, tuple(sops), tuple(files)))
    return written
