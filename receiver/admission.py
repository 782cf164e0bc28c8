"""Who may open an association: the calling-AE allow-list, the called-AE check and, when a
user identity file is configured, the User Identity the requestor presents (PS3.7 D.3.3.7).

Refusals are A-ASSOCIATE-RJ (PS3.8 9.3.4) rejected-permanent from the service user: the
same request would be refused again, so the sender should not retry it unchanged.

The user identity file holds one credential a line (blank lines and `#` comments ignored):

    username:password            any calling AE may present it (identity type 2)
    username                     a username alone (identity type 1)
    CT_SCANNER_1 username:pass   only calling AE CT_SCANNER_1 may present it
    CT_SCANNER_1 *:secret        a shared secret per calling AE: any username, this passcode

With a file configured every association must present a matching identity; Kerberos, SAML
and JWT identities (types 3-5) are then refused, since we cannot verify them.
"""

from __future__ import annotations

import dataclasses
import hmac
from pathlib import Path

from seriesflow.receiver.pdu import UserIdentity

# (result, source, reason): rejected-permanent (1), DICOM UL service-user (1), ...
CALLING_AE_NOT_RECOGNISED = (1, 1, 3)
CALLED_AE_NOT_RECOGNISED = (1, 1, 7)
# PS3.8 has no reason for a failed identity; "no-reason-given" is what dcmtk and
# pynetdicom requestors expect (the response says nothing about which part was wrong).
USER_IDENTITY_NOT_ACCEPTED = (1, 1, 1)

USERNAME, USERNAME_AND_PASSCODE = 1, 2


@dataclasses.dataclass(frozen=True)
class Credential:
    """One line of the user identity file; None for calling AE or username means any."""

    calling_ae_title: str | None
    username: str | None
    password: str | None  # None: a username alone (identity type 1)

    def __repr__(self) -> str:
        return f"Credential(calling={self.calling_ae_title!r}, username={self.username!r})"

    def matches(self, calling: str, identity: UserIdentity) -> bool:
        if self.calling_ae_title is not None and self.calling_ae_title != calling:
            return False
        username = identity.primary.decode("utf-8", "replace")
        if self.username is not None and not hmac.compare_digest(
            self.username.encode(), username.encode()
        ):
            return False
        if identity.kind == USERNAME:
            return self.password is None
        if identity.kind == USERNAME_AND_PASSCODE:
            return self.password is not None and hmac.compare_digest(
                self.password.encode(), identity.secondary
            )
        return False


def load_credentials(path: Path) -> tuple[Credential, ...]:
    """The credentials in a user identity file; ValueError naming the line when malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc.__class__.__name__}") from None
    credentials = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) > 2:
            raise ValueError(f"{path} line {number}: expected [CALLING_AE] username[:password]")
        calling = words[0] if len(words) == 2 else None
        if calling is not None and (len(calling) > 16 or calling == "*"):
            raise ValueError(f"{path} line {number}: the calling AE title must be 1-16 characters")
        username, colon, password = words[-1].partition(":")
        if not username or (colon and not password):
            raise ValueError(f"{path} line {number}: empty username or password")
        if username == "*" and not colon:
            raise ValueError(f"{path} line {number}: '*' (any username) needs a password")
        credentials.append(
            Credential(calling, None if username == "*" else username, password if colon else None)
        )
    if not credentials:
        raise ValueError(f"{path} holds no credential")
    return tuple(credentials)


@dataclasses.dataclass(frozen=True)
class Admission:
    """`allowed_calling` empty allows every calling AE; `require_called` off accepts any called AE
    (dcmtk's and Orthanc's default), on accepts only `ae_title`; `credentials` empty does not
    check user identity, else every association must present one that matches."""

    ae_title: str
    allowed_calling: frozenset[str] = frozenset()
    require_called: bool = False
    credentials: tuple[Credential, ...] = ()

    def refusal(
        self, calling: str, called: str, identity: UserIdentity | None = None
    ) -> tuple[tuple[int, int, int], str] | None:
        """None to accept, else the A-ASSOCIATE-RJ (result, source, reason) and why, for the log."""
        if self.require_called and called.strip() != self.ae_title:
            return CALLED_AE_NOT_RECOGNISED, "called AE title not recognised"
        if self.allowed_calling and calling.strip() not in self.allowed_calling:
            return CALLING_AE_NOT_RECOGNISED, "calling AE title not allowed"
        if self.credentials:
            if identity is None:
                return USER_IDENTITY_NOT_ACCEPTED, "no user identity presented"
            if identity.kind not in (USERNAME, USERNAME_AND_PASSCODE):
                why = f"user identity type {identity.kind} not supported"
                return USER_IDENTITY_NOT_ACCEPTED, why
            if not any(c.matches(calling.strip(), identity) for c in self.credentials):
                return USER_IDENTITY_NOT_ACCEPTED, "user identity not accepted"
        return None

    def identity_response(self, identity: UserIdentity | None) -> bytes | None:
        """The server response to put in the AC (PS3.7 D.3.3.7.2), None for no response item.

        Only when the requestor asked for one. For username (and passcode) the response is
        empty by definition; Kerberos, SAML and JWT responses we cannot make, so none is sent
        and the requestor decides whether to go on."""
        if identity is None or not identity.positive_response_requested:
            return None
        return b"" if identity.kind in (USERNAME, USERNAME_AND_PASSCODE) else None
