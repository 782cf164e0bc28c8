"""The representative instance of a series: its middle by InstanceNumber, slice position,
SOPInstanceUID; and the slice position read from a header."""

from __future__ import annotations

import pytest
import rx_dicom
from pydicom.dataset import Dataset

from seriesflow.receiver import header, record, representative
from seriesflow.v1 import series_store_pb2 as pb


def inst(sop: str, number: int | None = None, position: float | None = None) -> pb.Instance:
    return pb.Instance(sop_instance_uid=sop, instance_number=number, slice_position=position)


def test_the_middle_by_instance_number_whatever_the_arrival_order() -> None:
    numbers = [7, 3, 9, 1, 5, 2, 8, 4, 6]
    instances = {seq: inst(f"1.{n}", n) for seq, n in enumerate(numbers)}
    assert instances[representative.middle(instances)].instance_number == 5


def test_with_an_even_count_the_earlier_of_the_two_middle_ones() -> None:
    instances = {n: inst(f"1.{n}", n) for n in (1, 2, 3, 4)}
    assert representative.middle(instances) == 2


def test_equal_numbers_are_ordered_by_slice_position_then_uid() -> None:
    instances = {
        0: inst("1.9", 1, 30.0),
        1: inst("1.8", 1, -10.0),
        2: inst("1.7", 1, 10.0),
        3: inst("1.2", 1),  # no position: after those with one
        4: inst("1.1", 1),
    }
    # order: -10 (1), 10 (2), 30 (0), then 1.1 (4), 1.2 (3): the middle is seq 0
    assert representative.middle(instances) == 0


def test_instances_without_a_number_come_last() -> None:
    instances = {0: inst("1.1"), 1: inst("1.2"), 2: inst("1.3", 50), 3: inst("1.4", 60)}
    assert representative.middle(instances) == 3  # 50, 60, 1.1, 1.2: index 1


def test_when_the_middle_file_is_missing_the_nearest_available_one_is_chosen() -> None:
    instances = {n: inst(f"1.{n}", n) for n in range(1, 10)}  # middle: 5
    assert representative.middle(instances, available={1, 6, 9}) == 6
    assert representative.middle(instances, available={4, 6}) == 4  # a tie: the earlier
    with pytest.raises(ValueError):
        representative.middle(instances, available=set())


def _parsed(ds: Dataset) -> header.ParsedHeader:
    raw = rx_dicom.encode(ds)
    return header.parse(raw, str(ds.file_meta.TransferSyntaxUID))


def test_slice_position_is_the_image_position_along_the_slice_normal() -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial: the normal is +z
    ds.ImagePositionPatient = [-125.0, -130.5, 42.25]
    assert header.slice_position(_parsed(ds)) == pytest.approx(42.25)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: the normal is -x
    assert header.slice_position(_parsed(ds)) == pytest.approx(125.0)


@pytest.mark.parametrize(
    ("position", "orientation"),
    [(None, [1, 0, 0, 0, 1, 0]), ([1, 2, 3], None), ([1, 2], [1, 0, 0, 0, 1, 0])],
)
def test_no_slice_position_without_both_position_and_orientation(
    position: list[float] | None, orientation: list[float] | None
) -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    if position is not None:
        ds.ImagePositionPatient = position
    if orientation is not None:
        ds.ImageOrientationPatient = orientation
    parsed = _parsed(ds)
    assert header.slice_position(parsed) is None
    built = record.build(
        parsed,
        received_at=0.0,
        negotiated_sop_class_uid=str(ds.SOPClassUID),
        calling_ae_title="A",
        called_ae_title="B",
        receiver_id="r",
        representative=False,
    )
    assert not built.instances[0].HasField("slice_position")
