"""The spooled record: text decoded per SpecificCharacterSet, fallbacks flagged, and the
representative header as DICOM JSON with bulk data left out; and, sent with pynetdicom
through a receiver to the real store, what the store keeps of such records."""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import json
import random

import grpc
import pytest
import rx_dicom
import rx_send
from pydicom.dataset import Dataset
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, series_row, wait_for

from seriesflow.receiver import header, record
from seriesflow.receiver.app import quiet_libraries
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

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


def build(ds: Dataset, syntax: str = EXPLICIT_LE, representative: bool = True) -> pb.SeriesUpdate:
    parsed = header.parse(rx_dicom.encode(ds, syntax), syntax)
    return record.build(
        parsed,
        received_at=0.0,
        negotiated_sop_class_uid=rx_dicom.CT_IMAGE_STORAGE,
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

    update = build(ds)

    assert update.patient.patient_name == expected
    assert "\ufffd" not in expected
    assert list(update.text_decoding_fallbacks) == []


def test_bulk_data_and_pixels_are_left_out_of_the_representative_header() -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091011, "OB", b"\x01" * 4096)  # bulk: over the 1 KiB threshold
    ds.add_new(0x00091012, "OB", b"\x02" * 16)  # small binary stays inline

    as_json = json.loads(build(ds).representative_header_json)

    assert "7FE00010" not in as_json
    assert "00091011" not in as_json
    assert as_json["00091012"]["InlineBinary"]
    assert as_json["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]


def test_an_unknown_character_set_is_recorded_as_a_fallback() -> None:
    quiet_libraries()
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    ds.SpecificCharacterSet = "ISO_IR 999"
    update = build(ds, representative=False)
    assert "SpecificCharacterSet" in update.text_decoding_fallbacks
    assert update.patient.patient_name == "Doe^Jane"


def test_only_a_representative_record_carries_the_header() -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    assert build(ds, representative=True).representative_header_json
    assert build(ds, representative=False).representative_header_json == ""


def test_a_header_that_will_not_render_leaves_the_record_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("cannot render")

    monkeypatch.setattr(Dataset, "to_json_dict", refuse)
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)

    update = build(ds, representative=True)

    assert update.representative_header_json == ""
    assert update.instances[0].sop_instance_uid == str(ds.SOPInstanceUID)
    assert update.patient.patient_name == "Doe^Jane"


def test_a_value_pydicom_cannot_convert_is_unparseable() -> None:
    quiet_libraries()
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    # InstanceNumber sent as a US of three bytes: it parses, and fails only when read.
    instance_number = b"\x20\x00\x13\x00IS\x02\x001 "
    raw = rx_dicom.encode(ds)
    assert raw.count(instance_number) == 1
    parsed = header.parse(
        raw.replace(instance_number, b"\x20\x00\x13\x00US\x03\x00abc"), EXPLICIT_LE
    )
    with pytest.raises(header.HeaderError) as failed:
        record.build(
            parsed,
            received_at=0.0,
            negotiated_sop_class_uid="",
            calling_ae_title="SCU",
            called_ae_title="SCP",
            receiver_id="r",
            representative=False,
        )
    assert failed.value.reason == "unparseable"


def _strict_json(text: str) -> dict[str, object]:
    """json.loads that refuses the NaN/Infinity literals Python would otherwise accept."""

    def refuse(literal: str) -> None:
        raise AssertionError(f"non-JSON literal {literal} in the header")

    parsed = json.loads(text, parse_constant=refuse)
    assert isinstance(parsed, dict)
    return parsed


def test_nan_and_infinity_in_fd_and_fl_are_written_as_json_strings() -> None:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    nan, inf = float("nan"), float("inf")
    ds.add_new(0x00189327, "FD", [nan, inf, -inf, 1.5])  # TablePosition
    ds.add_new(0x00186028, "FD", -inf)  # ReferencePixelPhysicalValueX
    ds.add_new(0x00181320, "FL", nan)  # B1rms (FL: a 32-bit NaN)
    item = Dataset()
    item.add_new(0x00189327, "FD", inf)
    ds.add_new(0x00082112, "SQ", [item])  # SourceImageSequence, a nested FD

    update = build(ds)
    as_json = _strict_json(update.representative_header_json)

    assert as_json["00189327"] == {"vr": "FD", "Value": ["NaN", "Infinity", "-Infinity", 1.5]}
    assert as_json["00186028"]["Value"] == ["-Infinity"]  # type: ignore[index]
    assert as_json["00181320"]["Value"] == ["NaN"]  # type: ignore[index]
    nested = as_json["00082112"]["Value"][0]  # type: ignore[index]
    assert nested["00189327"]["Value"] == ["Infinity"]
    # The instance itself is recorded as always.
    assert update.instances[0].sop_instance_uid == str(ds.SOPInstanceUID)
    assert update.patient.patient_name == "Doe^Jane"


def _nested(levels: int) -> Dataset:
    ds = rx_dicom.instance(rx_dicom.SeriesSpec(), 1)
    inner = Dataset()
    inner.CodeValue = "x"
    for _ in range(levels - 1):
        outer = Dataset()
        outer.ContentSequence = [inner]
        inner = outer
    ds.ContentSequence = [inner]
    return ds


def test_a_header_nested_deeper_than_the_store_takes_is_left_out_and_the_instance_kept() -> None:
    """Sequences nested 150 deep rendered here but the store refused them (recursion),
    dead-lettering acknowledged instances: the receiver now leaves out any header nested
    past MAX_HEADER_DEPTH (64 sequence levels), which the store accepts with room."""
    within = build(_nested(64))
    assert within.representative_header_json
    deeper = build(_nested(65))
    assert deeper.representative_header_json == ""
    assert deeper.instances[0].sop_instance_uid
    assert deeper.patient.patient_name == "Doe^Jane"
    assert record.MAX_HEADER_DEPTH == 1 + 3 * 64 + 2


def test_nul_padded_ae_titles_are_recorded_without_the_nul() -> None:
    """A calling AE title padded with NUL (seen on the wire: the A-ASSOCIATE-RQ parser keeps
    them) would make the store reject every update of that sender after its instances
    were acknowledged."""
    parsed = header.parse(rx_dicom.encode(rx_dicom.instance(rx_dicom.SeriesSpec(), 1)), EXPLICIT_LE)
    update = record.build(
        parsed,
        received_at=0.0,
        negotiated_sop_class_uid=rx_dicom.CT_IMAGE_STORAGE,
        calling_ae_title="MOD\x00\x00\x00 ",
        called_ae_title="ST\x00ORESCP",
        receiver_id="r",
        representative=False,
    )
    assert update.source.calling_ae_title == "MOD"
    assert update.source.called_ae_title == "STORESCP"


def _noise(length: int, seed: int) -> str:
    """Incompressible Latin-1 text (the instances' character set is ISO_IR 100), without
    the matching syntax's metacharacters (`?` wildcard, `\\` value list): the list RPCs'
    filters use DICOM matching, and this text is found by an exact filter."""
    rng = random.Random(seed)
    alphabet = [c for c in (*range(0x30, 0x7B), *range(0xC0, 0x100)) if chr(c) not in "?\\"]
    return "".join(chr(rng.choice(alphabet)) for _ in range(length))


def test_nan_values_and_long_text_sent_with_pynetdicom_are_stored_and_answered(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    """The issue's two poison instances, end to end: FD NaN/Infinity (dead-lettered before)
    and kilobytes of incompressible AccessionNumber/PatientID/Modality (which stopped all
    ingestion before). Both series arrive complete, and so does a normal one after them."""
    quiet_libraries()
    receiver = make_receiver(store_address=store.address, series_idle_timeout=5)
    nan_spec = rx_dicom.SeriesSpec()
    nan_series = rx_dicom.series(nan_spec, 3)
    for ds in nan_series:  # on every instance: whichever is representative carries them
        ds.add_new(0x00189327, "FD", [float("nan"), float("inf"), float("-inf")])
    long_spec = rx_dicom.SeriesSpec(patient_id=_noise(5_000, 1), modality=_noise(6_000, 2))
    long_series = rx_dicom.series(long_spec, 2)
    accession = _noise(20_000, 3)
    for ds in long_series:
        ds.AccessionNumber = accession
    normal_spec = rx_dicom.SeriesSpec()

    answers = rx_send.send_all(
        receiver.dicom_port, [*nan_series, *long_series, *rx_dicom.series(normal_spec, 4)]
    )

    assert [a.status for a in answers] == [0] * 9
    for spec, count in ((nan_spec, 3), (long_spec, 2), (normal_spec, 4)):
        wait_for(
            lambda spec=spec, count=count: (
                (row := series_row(database_url, spec.series_uid)) is not None
                and row["num_instances"] == count
                and row["status"] == "COMPLETE"
            ),
            timeout=20,
        )
    stored = series_row(database_url, long_spec.series_uid)
    assert stored is not None
    assert stored["patient_id"] == long_spec.patient_id
    with grpc.insecure_channel(store.address) as channel:
        stub = pb_grpc.SeriesStoreStub(channel)
        [table] = stub.GetAttributes(
            pb.GetAttributesRequest(
                series_instance_uid=nan_spec.series_uid, attributes=["TablePosition"]
            )
        ).attributes
        assert json.loads(table.value_json) == ["NaN", "Infinity", "-Infinity"]
        assert table.value == "NaN\\Infinity\\-Infinity"
        found = stub.ListSeries(pb.ListSeriesRequest(modality=long_spec.modality)).series
        assert [x.series_instance_uid for x in found] == [long_spec.series_uid]
        studies = stub.ListStudies(pb.ListStudiesRequest(accession_number=accession)).studies
        assert [x.study_instance_uid for x in studies] == [long_spec.study_uid]
