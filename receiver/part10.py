"""The file meta group of a DICOM Part 10 file (PS3.10 7.1), read from its first bytes.

STOW-RS (receiver.stow) receives instances as Part 10 files, while intake reads datasets
as C-STORE carries them: this finds where the meta group ends and what it says (transfer
syntax, SOP class and instance), from however many bytes have arrived so far, so the
dataset after it can stream on without the file ever being held whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# A file meta group is a few hundred bytes; more than this is not one.
_MAX_META = 1024 * 1024
_PREAMBLE = 128
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"})
_LONG_VRS |= {b"UR", b"UT", b"UV"}


class NotPart10(Exception):
    """A part is not a DICOM Part 10 file (no DICM prefix, or a broken file meta group)."""


@dataclass(frozen=True)
class FileMeta:
    """What a part's file meta group says of its dataset."""

    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def _ui(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\0 ").strip()


def _meta_start(buffer: bytes | bytearray, final: bool) -> int | None:
    """Where the file meta group's first element is. PS3.10 7.1 puts a 128-byte preamble
    and "DICM" before it; some writers leave both out (pydicom 3 writing a dataset that
    was not read from a file, as dicomweb-client sends it), which is accepted too: the
    group (0002) and an explicit VR say it is one."""
    vr = bytes(buffer[4:6])
    if buffer[:2] == b"\x02\x00" and len(vr) == 2 and vr.isalpha() and vr.isupper():
        return 0
    if len(buffer) < _PREAMBLE + 4:
        if final:
            raise NotPart10("not a DICOM Part 10 file: shorter than its preamble and prefix")
        return None
    if buffer[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise NotPart10("not a DICOM Part 10 file: no 'DICM' prefix after the 128-byte preamble")
    return _PREAMBLE + 4


def split_meta(buffer: bytes | bytearray, final: bool) -> tuple[FileMeta, int] | None:
    """The file meta of a Part 10 file starting in `buffer` and where its dataset begins;
    None when more bytes are needed (`final`: there are none). Raises NotPart10."""
    start = _meta_start(buffer, final)
    if start is None:
        return None
    values: dict[int, bytes] = {}
    pos = start
    while True:
        if len(buffer) - pos < 8:
            if not final:
                return None
            if len(buffer) == pos:
                break  # meta and nothing after: intake refuses the empty dataset
            raise NotPart10("file meta group is cut short")
        group, element = struct.unpack_from("<HH", buffer, pos)
        if group != 0x0002:
            break
        vr = bytes(buffer[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if len(buffer) - pos < 12:
                if final:
                    raise NotPart10("file meta group is cut short")
                return None
            (length,) = struct.unpack_from("<I", buffer, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buffer, pos + 6)
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > _MAX_META:
            raise NotPart10("file meta group is not explicit VR little endian of defined length")
        if start + length > len(buffer):
            if final:
                raise NotPart10("file meta group is cut short")
            return None
        values[element] = bytes(buffer[start : start + length])
        pos = start + length
    syntax = _ui(values.get(0x0010, b""))
    if not syntax:
        raise NotPart10("file meta group has no TransferSyntaxUID (0002,0010)")
    meta = FileMeta(syntax, _ui(values.get(0x0002, b"")), _ui(values.get(0x0003, b"")))
    return meta, pos
