"""Opaque page tokens: a keyset (the last row's sort key) bound to the request's filters.

A token is base64url(JSON). Its keyset makes pages stable while rows arrive: every page
continues strictly after the last row returned, on an immutable key, so no row is returned
twice or skipped. The filter fingerprint makes a token used with other filters an error
instead of a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from google.protobuf.message import Message

from seriesflow.store.errors import BadRequest

_VERSION = 1


def fingerprint(request: Message, *ignored: str) -> str:
    """A short hash of the request's type and its fields other than paging ones.

    The type is part of it: ids of series, studies and patients are different keysets,
    so ListSeries' token given to ListPatients must be refused, not read as a patient id.
    """
    copy = type(request)()
    copy.CopyFrom(request)
    for name in ("page_token", "page_size", *ignored):
        copy.ClearField(name)
    digest = hashlib.sha256(request.DESCRIPTOR.full_name.encode())
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def encode(keyset: list[Any], filters: str) -> str:
    raw = json.dumps({"v": _VERSION, "k": keyset, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# Keyset values are bigint ids/sort keys or text; anything else was not issued here.
_BIGINT = range(-(2**63), 2**63)


def _fits(value: object, kind: type) -> bool:
    if kind is int:
        return type(value) is int and value in _BIGINT
    return type(value) is kind and "\0" not in str(value)


def decode(token: str, filters: str, shape: tuple[type, ...]) -> list[Any] | None:
    """The keyset in `token` (one value per type in `shape`), None for an empty token;
    BadRequest if it is not ours (also a hand-edited one: it must never reach SQL as
    anything but the types the query binds)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        keyset = payload["k"]
        ok = (
            payload.get("v") == _VERSION
            and isinstance(keyset, list)
            and len(keyset) == len(shape)
            and all(_fits(value, kind) for value, kind in zip(keyset, shape, strict=True))
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError, binascii.Error):
        ok = False
    if not ok:
        raise BadRequest(
            "page_token", "is not a token this service issued; pass next_page_token as returned"
        )
    if payload.get("f") != filters:
        raise BadRequest(
            "page_token",
            "was issued for another request or different filters;"
            " repeat the same call with the same filters, or start over without a token",
        )
    return list(keyset)


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested == 0:
        return default
    if not 1 <= requested <= maximum:
        raise BadRequest("page_size", f"{requested} is out of range 1..{maximum} (0 = {default})")
    return requested
