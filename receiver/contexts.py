"""What the receiver accepts, per proposed presentation context (PS3.8 9.3.3.2, PS3.7 D.3.3).

Storage SOP classes in every transfer syntax listed here, as sent: pixel data is never
decoded, so compressed and video syntaxes cost nothing. Verification in the uncompressed
syntaxes. With `accept_unknown_sop_classes` (the default; storescp --promiscuous, Orthanc's
UnknownSopClassAccepted) also any abstract syntax that is not a known non-storage service
(private classes such as Siemens CSA Non-Image, IODs newer than our SOP class list): a
storage node's job is to keep what modalities send, and a refused context is usually lost
quietly at the sender. With a C-FIND service (`find`), the Patient Root and Study Root
FIND models in the uncompressed syntaxes but deflate (receiver.find answers them through the
store). C-MOVE, C-GET, worklist, commitment, print and other services we do not offer are
always refused: no pixel data is kept, so there is nothing to retrieve.

docs/conformance.md publishes these lists; tests/test_conformance.py keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from pydicom._uid_dict import UID_dictionary
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.service_class import ServiceClass
from pynetdicom.sop_class import uid_to_service_class

VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: a file, never sent by C-STORE
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)

UNCOMPRESSED = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    EXPLICIT_LITTLE,  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still sent)
)
# Every one of these is explicit VR little endian outside its encapsulated pixel data, so
# the header is read the same way whatever the codec.
ENCAPSULATED = (
    "1.2.840.10008.1.2.1.98",  # encapsulated uncompressed explicit VR little endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 part 2 multi-component lossless
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 part 2 multi-component
    "1.2.840.10008.1.2.4.100",  # MPEG-2 MP@ML
    "1.2.840.10008.1.2.4.100.1",  # MPEG-2 MP@ML, fragmentable
    "1.2.840.10008.1.2.4.101",  # MPEG-2 MP@HL
    "1.2.840.10008.1.2.4.101.1",  # MPEG-2 MP@HL, fragmentable
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.102.1",  # MPEG-4 AVC/H.264 HP@4.1, fragmentable
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible HP@4.1
    "1.2.840.10008.1.2.4.103.1",  # MPEG-4 AVC/H.264 BD-compatible, fragmentable
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.104.1",  # MPEG-4 AVC/H.264 HP@4.2 2D, fragmentable
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.105.1",  # MPEG-4 AVC/H.264 HP@4.2 3D, fragmentable
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.106.1",  # MPEG-4 AVC/H.264 Stereo HP@4.2, fragmentable
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main profile @5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 profile @5.1
    "1.2.840.10008.1.2.4.110",  # JPEG XL lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG recompression
    "1.2.840.10008.1.2.4.112",  # JPEG XL
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.8.1",  # deflated image frame compression
)
TRANSFER_SYNTAXES = (*UNCOMPRESSED, *ENCAPSULATED)
# C-FIND identifiers are read and written by receiver.find with pydicom; deflate would need
# inflating and deflating each one for no gain on a few hundred bytes.
FIND_TRANSFER_SYNTAXES = tuple(s for s in UNCOMPRESSED if s != "1.2.840.10008.1.2.1.99")

STORAGE_SOP_CLASSES = frozenset(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax
)

# Presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE = 0
USER_REJECTION = 1
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# The `reason` label of the rejected-contexts metric: a fixed set.
RejectionReason = Literal[
    "abstract_syntax_not_supported", "transfer_syntaxes_not_supported", "role_not_supported"
]
REJECTION_REASONS: dict[int, RejectionReason] = {
    ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract_syntax_not_supported",
    TRANSFER_SYNTAXES_NOT_SUPPORTED: "transfer_syntaxes_not_supported",
}

# Which proposed syntax wins within one context.
Preference = Literal["sender", "explicit-first"]
PREFERENCES: tuple[Preference, ...] = ("sender", "explicit-first")

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


@dataclasses.dataclass(frozen=True)
class Policy:
    """`preference`: "sender" takes the sender's first proposal we accept (its choice to make;
    compressed data stays compressed); "explicit-first" takes explicit VR little endian when
    proposed (readable by everything downstream), else the sender's first we accept.
    `accept_unknown_transfer_syntaxes` also accepts syntaxes not listed above, read as
    explicit VR little endian (what every encapsulated syntax is); off by default, because a
    syntax we do not know may not be readable at all and is better converted by the sender."""

    accept_unknown_sop_classes: bool = True
    accept_unknown_transfer_syntaxes: bool = False
    preference: Preference = "sender"
    find: bool = False  # the engine has a C-FIND service (receiver.find)

    def serves(self, abstract_syntax: str) -> bool:
        """Whether we act as SCP of this SOP class (verification, storage, FIND)."""
        return (
            abstract_syntax == VERIFICATION
            or (self.find and abstract_syntax in FIND_SOP_CLASSES)
            or abstract_syntax in STORAGE_SOP_CLASSES
            or (self.accept_unknown_sop_classes and is_unknown_sop_class(abstract_syntax))
        )

    def negotiate(self, abstract_syntax: str, proposed: list[str]) -> tuple[int, str]:
        """(result, transfer syntax) for one proposed presentation context."""
        first = proposed[0] if proposed else ""
        if abstract_syntax == VERIFICATION:
            supported: tuple[str, ...] = UNCOMPRESSED
            unknown_ok = False
        elif self.find and abstract_syntax in FIND_SOP_CLASSES:
            supported, unknown_ok = FIND_TRANSFER_SYNTAXES, False
        elif abstract_syntax in STORAGE_SOP_CLASSES or (
            self.accept_unknown_sop_classes and is_unknown_sop_class(abstract_syntax)
        ):
            supported, unknown_ok = TRANSFER_SYNTAXES, self.accept_unknown_transfer_syntaxes
        else:
            return ABSTRACT_SYNTAX_NOT_SUPPORTED, first
        usable = [s for s in proposed if s in supported or (unknown_ok and _is_uid(s))]
        if not usable:
            return TRANSFER_SYNTAXES_NOT_SUPPORTED, first
        if self.preference == "explicit-first" and EXPLICIT_LITTLE in usable:
            return ACCEPTANCE, EXPLICIT_LITTLE
        return ACCEPTANCE, usable[0]


def negotiate(abstract_syntax: str, proposed: list[str]) -> tuple[int, str]:
    """The default policy's answer (see Policy.negotiate)."""
    return Policy().negotiate(abstract_syntax, proposed)


def is_unknown_sop_class(uid: str) -> bool:
    """A well-formed UID that names no service we know: taken to be a storage SOP class.

    Known non-storage services (query/retrieve, worklist, commitment, print, ...) and UIDs
    that are not SOP classes at all (transfer syntaxes, application contexts) are not."""
    if not _is_uid(uid) or uid == _MEDIA_STORAGE_DIRECTORY:
        return False
    if uid_to_service_class(uid) is not ServiceClass:
        return False  # pynetdicom knows its service, and it is not storage
    known = UID_dictionary.get(uid)
    return known is None or (known[1] == "SOP Class" and "Storage" in known[0])


def _is_uid(text: str) -> bool:
    return 0 < len(text) <= 64 and _UID.match(text) is not None
