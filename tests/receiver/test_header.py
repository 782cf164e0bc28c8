"""Header reading: text decoded per SpecificCharacterSet, UIDs checked, bulk data left out."""

from __future__ import annotations

import json

import pytest
import rx_dicom
from google.protobuf.timestamp_pb2 import Timestamp
from pydicom.dataset import Dataset

from seriesflow.receiver import header, intake
from seriesflow.receiver.app import quiet_libraries

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CHARSET_FILES = [
    "chrArab.dcm",  # ISO_IR 127
    "chrFren.dcm",  # ISO_IR 100
    "chrGerm.dcm",  # ISO_IR 100
    "chrGreek.dcm",  # ISO_IR 126
    "chrH31.dcm",  # ISO 2022 IR 87 (Japanese)
    "chrH32.dcm",  # ISO 2022 IR 13 / IR 87
    "chrHbrw.dcm",  # ISO_IR 138
    "chrI2.dcm",  # ISO 2022 IR 149 (Korean)
    "chrKoreanMulti.dcm",  # ISO 2022 IR 149
    "chrRuss.dcm",  # ISO_IR 144
    "chrX1.dcm",  # ISO_IR 192 (UTF-8)
    "chrX2.dcm",  # GB18030
]


def record(ds: Dataset, syntax: str = EXPLICIT_LE, representative: bool = True) -> object:
    parsed = header.parse(rx_dicom.encode(ds, syntax), syntax)
    return header.build_record(
        parsed,
        received_at=Timestamp(),
        calling_ae_title="SCU",
        called_ae_title="SCP",
        receiver_id="r",
        representative=representative,
    )


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_names_decode_to_the_same_unicode_as_pydicom(name: str) -> None:
    quiet_libraries()
    ds = rx_dicom.sample(name)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if keyword not in ds:
            setattr(ds, keyword, rx_dicom.uid())
    expected = str(ds.PatientName)

    update = record(ds)

    assert update.patient.patient_name == expected  # type: ignore[attr-defined]
    assert "\ufffd" not in expected
    assert list(update.text_decoding_fallbacks) == []  # type: ignore[attr-defined]


def test_bulk_data_and_pixels_are_left_out_of_the_representative_header() -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091011, "OB", b"\x01" * 4096)  # bulk: over the 1 KiB threshold
    ds.add_new(0x00091012, "OB", b"\x02" * 16)  # small binary stays inline

    as_json = json.loads(record(ds).representative_header_json)  # type: ignore[attr-defined]

    assert "7FE00010" not in as_json
    assert "00091011" not in as_json
    assert as_json["00091012"]["InlineBinary"]
    assert as_json["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        ("", "missing_uid"),
        ("   ", "missing_uid"),
        ("1.2.abc", "malformed_uid"),
        ("1..2", "malformed_uid"),
        (".1.2", "malformed_uid"),
        ("1.2." + "3" * 70, "malformed_uid"),
    ],
)
def test_unusable_series_uids_are_refused_with_a_named_reason(uid: str, reason: str) -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.SeriesInstanceUID = uid
    with pytest.raises(header.HeaderError) as refused:
        header.parse(rx_dicom.encode(ds), EXPLICIT_LE)
    assert refused.value.reason == reason
    assert intake.REFUSAL_STATUS[refused.value.reason] == intake.DATASET_DOES_NOT_MATCH
    assert "SeriesInstanceUID" in refused.value.comment


def test_uid_padding_and_leading_zero_components_are_accepted() -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.SeriesInstanceUID = "1.2.826.0.01.3\x00"  # NUL padding; '01' is lax but harmless
    parsed = header.parse(rx_dicom.encode(ds), EXPLICIT_LE)
    assert parsed.series_uid == "1.2.826.0.01.3"


def test_an_unknown_character_set_is_recorded_as_a_fallback() -> None:
    quiet_libraries()
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.SpecificCharacterSet = "ISO_IR 999"
    update = record(ds, representative=False)
    assert "SpecificCharacterSet" in update.text_decoding_fallbacks  # type: ignore[attr-defined]
    assert update.patient.patient_name == "Doe^Jane"  # type: ignore[attr-defined]
