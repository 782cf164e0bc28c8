"""The intake's one table from refusal reasons to C-STORE statuses, and its completeness."""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import pytest
import rx_dicom

from seriesflow.receiver import header, intake
from seriesflow.receiver.app import quiet_libraries

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_every_reason_the_header_parser_can_raise_has_a_dicom_status() -> None:
    assert set(get_args(header.HeaderReason)) <= set(intake.REFUSAL_STATUS)


def test_every_refusal_has_exactly_one_status_and_none_is_success() -> None:
    assert set(get_args(intake.Refusal)) == set(intake.REFUSAL_STATUS)
    assert intake.SUCCESS not in intake.REFUSAL_STATUS.values()


def _without_sop_instance_uid() -> bytes:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    del ds.SOPInstanceUID
    return rx_dicom.encode(ds)


def _malformed_study_uid() -> bytes:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.StudyInstanceUID = "1.2.abc"
    return rx_dicom.encode(ds)


@pytest.mark.parametrize(
    ("make", "syntax", "status"),
    [
        (_without_sop_instance_uid, EXPLICIT_LE, 0xA900),
        (_malformed_study_uid, EXPLICIT_LE, 0xA900),
        (lambda: b"\x08\x00\x05", EXPLICIT_LE, 0xC000),
        (lambda: b"not deflated", "1.2.840.10008.1.2.1.99", 0xC000),
    ],
    ids=["missing-uid", "malformed-uid", "not-dicom", "bad-deflate"],
)
def test_what_the_parser_raises_maps_to_the_status_the_sender_gets(
    make: Callable[[], bytes], syntax: str, status: int
) -> None:
    quiet_libraries()
    raw = make()
    with pytest.raises(header.HeaderError) as failed:
        header.parse(raw, syntax)
    assert failed.value.reason in get_args(header.HeaderReason)
    assert intake.REFUSAL_STATUS[failed.value.reason] == status
