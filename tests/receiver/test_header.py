"""Header reading: UIDs checked, padding tolerated, unusable ones refused with a reason."""

from __future__ import annotations

import pytest
import rx_dicom

from seriesflow.receiver import header, intake
from seriesflow.receiver.app import quiet_libraries

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(autouse=True)
def _quiet() -> None:
    quiet_libraries()  # the UIDs below are invalid on purpose: no pydicom warnings about it


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
