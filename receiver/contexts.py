"""What the receiver accepts: every storage SOP class and Verification, in every transfer
syntax as sent. Pixel data is never decoded, so compressed syntaxes cost nothing."""

from __future__ import annotations

from pynetdicom import AllStoragePresentationContexts

VERIFICATION = "1.2.840.10008.1.1"

UNCOMPRESSED = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still sent)
)
TRANSFER_SYNTAXES = (
    *UNCOMPRESSED,
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE lossless
)

STORAGE_SOP_CLASSES = frozenset(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax
)

# Presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def negotiate(abstract_syntax: str, proposed: list[str]) -> tuple[int, str]:
    """(result, transfer syntax) for one proposed presentation context.

    The first proposed syntax we support wins: the sender's preference is its own to make.
    """
    if abstract_syntax == VERIFICATION:
        supported: tuple[str, ...] = UNCOMPRESSED
    elif abstract_syntax in STORAGE_SOP_CLASSES:
        supported = TRANSFER_SYNTAXES
    else:
        return ABSTRACT_SYNTAX_NOT_SUPPORTED, proposed[0] if proposed else ""
    for syntax in proposed:
        if syntax in supported:
            return ACCEPTANCE, syntax
    return TRANSFER_SYNTAXES_NOT_SUPPORTED, proposed[0] if proposed else ""
