"""What senders put on the wire: every transfer syntax as sent, and hostile datasets.

Hostile instances share one association with good ones: each bad one gets its own status
and ErrorComment, the association goes on, and every good instance is stored exactly once.
"""

# ruff: noqa: F811  (fixtures are imported from rx_harness: pytest finds them by name)

from __future__ import annotations

import psycopg
import rx_dicom
import rx_send
from pydicom.dataset import Dataset
from rx_harness import MakeReceiver, make_receiver, store  # noqa: F401 (fixtures)
from rx_store import StoreProcess, instance_syntaxes, series_counts, series_row, wait_for

EXPLICIT_LE = "1.2.840.10008.1.2.1"
SYNTAXES = {
    "implicit little endian": "1.2.840.10008.1.2",
    "explicit big endian": "1.2.840.10008.1.2.2",
    "deflated": "1.2.840.10008.1.2.1.99",
    "explicit little endian": EXPLICIT_LE,
}


def test_instances_are_stored_in_the_transfer_syntax_they_were_sent_in(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    spec = rx_dicom.SeriesSpec()
    sent: dict[str, str] = {}
    contexts = [(rx_dicom.CT_IMAGE_STORAGE, list(SYNTAXES.values()))]
    # Compressed samples shipped with pydicom, moved into our series: pixel data stays
    # encapsulated and is never decoded.
    compressed: list[Dataset] = []
    for name in ("MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        ds = rx_dicom.sample(name)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = spec.study_uid, spec.series_uid
        ds.SOPInstanceUID = rx_dicom.uid()
        contexts.append((str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)]))
        compressed.append(ds)
    assoc = rx_send.associate(receiver.dicom_port, contexts=contexts)
    try:
        for number, syntax in enumerate(SYNTAXES.values(), start=1):
            ds = rx_dicom.instance(spec, number)
            assert rx_send.store(assoc, ds, syntax).status == 0, syntax
            sent[str(ds.SOPInstanceUID)] = syntax
        for ds in compressed:
            syntax = str(ds.file_meta.TransferSyntaxUID)
            raw = rx_dicom.encode(ds, EXPLICIT_LE)  # encapsulated pixel data, as on the wire
            answer = rx_send.send_raw(
                assoc, raw, str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax
            )
            assert answer.status == 0, (syntax, answer)
            sent[str(ds.SOPInstanceUID)] = syntax
    finally:
        assoc.release()

    wait_for(lambda: series_counts(database_url).get(spec.series_uid) == len(sent))
    assert instance_syntaxes(database_url, spec.series_uid) == sent
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.91"} <= set(sent.values())


def _without(ds: Dataset, keyword: str) -> Dataset:
    delattr(ds, keyword)
    return ds


def test_hostile_datasets_get_their_own_status_and_cost_nothing_else(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    receiver = make_receiver(store_address=store.address)
    good = rx_dicom.SeriesSpec(patient_name="Good^Patient")
    odd = rx_dicom.SeriesSpec(patient_name="Odd^Names", patient_id="PAT-ODD")
    good_instances = rx_dicom.series(good, 6)
    ct = rx_dicom.CT_IMAGE_STORAGE

    def broken(number: int) -> Dataset:
        return rx_dicom.instance(good, 100 + number)

    valid_bytes = rx_dicom.encode(broken(0))
    header_only = broken(1)
    del header_only.PixelData
    header_bytes = rx_dicom.encode(header_only)
    blank = broken(5)
    blank.SeriesInstanceUID = "   "
    malformed = broken(6)
    malformed.StudyInstanceUID = "1.2.840.abc.7"
    too_long_uid = broken(7)
    too_long_uid.SOPInstanceUID = "1." + "2" * 80

    # (what, raw bytes, expected status, words the ErrorComment must contain)
    hostile: list[tuple[str, bytes, int, str]] = [
        (
            "no SOPInstanceUID",
            rx_dicom.encode(_without(broken(2), "SOPInstanceUID")),
            0xA900,
            "SOPInstanceUID is missing",
        ),
        (
            "no SeriesInstanceUID",
            rx_dicom.encode(_without(broken(3), "SeriesInstanceUID")),
            0xA900,
            "SeriesInstanceUID is missing",
        ),
        (
            "no StudyInstanceUID",
            rx_dicom.encode(_without(broken(4), "StudyInstanceUID")),
            0xA900,
            "StudyInstanceUID is missing",
        ),
        ("blank SeriesInstanceUID", rx_dicom.encode(blank), 0xA900, "SeriesInstanceUID is missing"),
        (
            "malformed StudyInstanceUID",
            rx_dicom.encode(malformed),
            0xA900,
            "StudyInstanceUID is malformed",
        ),
        (
            "UID over 64 characters",
            rx_dicom.encode(too_long_uid),
            0xA900,
            "SOPInstanceUID is malformed",
        ),
        (
            "truncated in the header",
            header_bytes[: header_bytes.index(b"test series") + 4],
            0xC000,
            "truncated",
        ),
        ("truncated in the pixel data", valid_bytes[:-10], 0xC000, "truncated"),
        (
            "garbage after a valid header",
            header_bytes + b"\xde\xad\xbe\xef not DICOM" * 4,
            0xC000,
            "truncated",
        ),
        ("not DICOM at all", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0xC000, ""),
        ("three bytes", b"\x08\x00\x05", 0xC000, "not DICOM"),
    ]

    nul_name = rx_dicom.instance(odd, 1)
    nul_name.PatientName = "Odd\x00^Names"
    nul_name.StudyDescription = "with\x00nul"
    huge = rx_dicom.instance(odd, 2)
    huge.StudyDescription = "x" * 100_000  # LO allows 64
    huge.SeriesNumber = "99999999999"  # IS beyond 32 bits
    bad_utf8 = rx_dicom.instance(odd, 3)
    bad_utf8.SpecificCharacterSet = "ISO_IR 192"
    bad_utf8.StudyDescription = huge.StudyDescription

    assoc = rx_send.associate(receiver.dicom_port)
    answers: dict[str, rx_send.Answer] = {}
    try:
        for index, (what, raw, _, _) in enumerate(hostile):
            answers[what] = rx_send.send_raw(assoc, raw, ct, rx_dicom.uid(), EXPLICIT_LE)
            # A good instance after every bad one: the association must still work.
            assert rx_send.store(assoc, good_instances[index % 6]).status == 0, what
        for ds in (nul_name, huge):
            answers[str(ds.InstanceNumber)] = rx_send.store(assoc, ds)
        raw = rx_dicom.encode(bad_utf8).replace(b"Odd^Names", b"Odd^N\xff\xfees")
        answers["bad utf-8"] = rx_send.send_raw(
            assoc, raw, ct, str(bad_utf8.SOPInstanceUID), EXPLICIT_LE
        )
    finally:
        assoc.release()

    for what, _, status, words in hostile:
        assert answers[what].status == status, (what, answers[what])
        assert words in answers[what].comment, (what, answers[what])
        assert len(answers[what].comment) <= 64
    assert answers["1"].status == answers["2"].status == answers["bad utf-8"].status == 0

    expected = {good.series_uid: 6, odd.series_uid: 3}
    wait_for(lambda: series_counts(database_url) == expected)
    row = series_row(database_url, odd.series_uid)
    assert row is not None
    # NUL never reaches PostgreSQL; oversized values are kept whole; bad bytes are flagged.
    assert "\x00" not in str(row["patient_name"])
    assert row["text_decoding_fallbacks"] == ["PatientName"]
    assert series_row(database_url, good.series_uid)["patient_name"] == "Good^Patient"  # type: ignore[index]
    with psycopg.connect(database_url) as conn:
        descriptions = conn.execute(
            "SELECT length(study_description) FROM studies WHERE study_instance_uid = %s",
            (odd.study_uid,),
        ).fetchone()
    assert descriptions == (100_000,)  # the latest instance's value, not cut at LO's 64


IMPLICIT_LE = "1.2.840.10008.1.2"


def test_text_too_large_to_deliver_is_refused_at_c_store_and_blocks_nothing(
    make_receiver: MakeReceiver, store: StoreProcess, database_url: str
) -> None:
    # Implicit VR gives text a 4-byte length: 18 MB in each of two attributes made a
    # record whose update (attributes plus representative header) passed gRPC's 64 MiB
    # message limit; it was answered 0x0000 and then broke the store stream forever.
    receiver = make_receiver(store_address=store.address)
    poison = rx_dicom.SeriesSpec(patient_name="Big^Text")
    good = rx_dicom.SeriesSpec(patient_name="Good^Patient")
    big = rx_dicom.instance(poison, 1)
    big.PatientID = "P" * 18_000_000
    big.StudyDescription = "S" * 18_000_000
    # Under the record limit, the text is stored whole (the header may be left out).
    large = rx_dicom.instance(good, 4)
    large.StudyDescription = "L" * 12_000_000
    assoc = rx_send.associate(receiver.dicom_port)
    try:
        refused = rx_send.store(assoc, big, IMPLICIT_LE)
        rest = [rx_send.store(assoc, ds).status for ds in rx_dicom.series(good, 3)]
        stored = rx_send.store(assoc, large, IMPLICIT_LE)  # the latest: its text wins
    finally:
        assoc.release()
    assert refused.status == 0xC001, refused
    assert "too large to deliver" in refused.comment
    assert stored.status == 0 and rest == [0, 0, 0]
    wait_for(lambda: series_counts(database_url) == {good.series_uid: 4})
    with psycopg.connect(database_url) as conn:
        description = conn.execute(
            "SELECT length(study_description) FROM studies WHERE study_instance_uid = %s",
            (good.study_uid,),
        ).fetchone()
    assert description == (12_000_000,)
