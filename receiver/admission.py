"""Who may open an association: the calling-AE allow-list and the called-AE check.

Both DICOM engines ask the same `Admission`, so they refuse the same peers with the same
A-ASSOCIATE-RJ reasons (PS3.8 9.3.4: rejected-permanent, source service-user).
"""

from __future__ import annotations

import dataclasses

# (result, source, reason): rejected-permanent (1), DICOM UL service-user (1), ...
CALLING_AE_NOT_RECOGNISED = (1, 1, 3)
CALLED_AE_NOT_RECOGNISED = (1, 1, 7)


@dataclasses.dataclass(frozen=True)
class Admission:
    """`allowed_calling` empty allows every calling AE; `require_called` off accepts any called AE
    (dcmtk's and Orthanc's default), on accepts only `ae_title`."""

    ae_title: str
    allowed_calling: frozenset[str] = frozenset()
    require_called: bool = False

    def refusal(self, calling: str, called: str) -> tuple[tuple[int, int, int], str] | None:
        """None to accept, else the A-ASSOCIATE-RJ (result, source, reason) and why, for the log.

        The called AE is checked first because pynetdicom's later check wins when both fail:
        the two engines then send the same reason."""
        if self.require_called and called.strip() != self.ae_title:
            return CALLED_AE_NOT_RECOGNISED, "called AE title not recognised"
        if self.allowed_calling and calling.strip() not in self.allowed_calling:
            return CALLING_AE_NOT_RECOGNISED, "calling AE title not allowed"
        return None
