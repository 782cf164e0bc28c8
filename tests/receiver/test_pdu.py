"""The asyncio engine's PDU and DIMSE codec, checked against pynetdicom's and pydicom's."""

from __future__ import annotations

import io

import pytest
from pydicom.filereader import read_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from seriesflow.receiver import pdu


def _request_bytes() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "STORESCP"
    contexts = [
        build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
        build_context("1.2.3.4.5", ["1.2.840.10008.1.2"]),
    ]
    for number, context in enumerate(contexts):
        context.context_id = 1 + 2 * number
    primitive.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 32768
    primitive.user_information = [maximum]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


def test_associate_rq_from_pynetdicom_is_understood_and_our_ac_decodes_there() -> None:
    encoded = _request_bytes()
    request = pdu.parse_associate_rq(encoded[6:])
    assert (request.calling_ae_title, request.called_ae_title) == ("MODALITY", "STORESCP")
    assert request.max_pdu_length == 32768
    assert [(c.context_id, c.abstract_syntax) for c in request.contexts] == [
        (1, "1.2.840.10008.5.1.4.1.1.2"),
        (3, "1.2.3.4.5"),
    ]
    assert request.contexts[0].transfer_syntaxes == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]

    raw = pdu.associate_ac(
        request, [(1, 0, "1.2.840.10008.1.2.1"), (3, 3, "1.2.840.10008.1.2")], 262144
    )
    ac = A_ASSOCIATE_AC()
    ac.decode(raw)
    primitive = ac.to_primitive()
    results = {
        cx.context_id: cx.result for cx in primitive.presentation_context_definition_results_list
    }
    assert results == {1: 0, 3: 3}
    [accepted] = [
        cx for cx in primitive.presentation_context_definition_results_list if cx.result == 0
    ]
    assert accepted.transfer_syntax[0] == "1.2.840.10008.1.2.1"
    assert primitive.maximum_length_received == 262144


def test_store_response_is_a_valid_command_set() -> None:
    command = pdu.response(
        pdu.C_STORE_RSP, 7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", 0xA900, "odd comment"
    )
    ds = read_dataset(io.BytesIO(command), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(command) - 12
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 7
    assert ds.Status == 0xA900
    assert ds.ErrorComment == "odd comment"
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert ds.CommandDataSetType == 0x0101


def test_a_long_command_is_split_within_the_peers_maximum_pdu() -> None:
    command = b"\x00\x00" * 100
    raw = pdu.p_data(5, command, 64)
    fragments = []
    pos = 0
    while pos < len(raw):
        length = int.from_bytes(raw[pos + 2 : pos + 6], "big")
        assert length <= 64  # PS3.8 D.1: the limit is on the PDU's variable field
        p_data = P_DATA_TF()
        p_data.decode(raw[pos : pos + 6 + length])
        fragments += [item.presentation_data_value for item in p_data.presentation_data_value_items]
        pos += 6 + length
    assert b"".join(f[1:] for f in fragments) == command
    assert [f[0] & 0x03 for f in fragments][-1] == 0x03
    assert all(f[0] & 0x03 == 0x01 for f in fragments[:-1])


@pytest.mark.parametrize(
    "body",
    [b"\x00\x00\x00\x05\x01", b"\x00\x00\x00\x01\x01\x03", b"\xff\xff\xff\xff\x01\x03abc"],
)
def test_malformed_p_data_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(pdu.ProtocolError):
        pdu.pdvs(body)


def test_nul_padded_ae_titles_are_read_without_their_padding() -> None:
    body = bytearray(_request_bytes()[6:])
    body[4:20] = b"STORESCP".ljust(16, b"\x00")
    body[20:36] = b"MODALITY".ljust(16, b"\x00")
    request = pdu.parse_associate_rq(bytes(body))
    assert (request.calling_ae_title, request.called_ae_title) == ("MODALITY", "STORESCP")
