"""The one exception tree of Hounsfield.

Every error a user or a peer can cause derives from :class:`HounsfieldError`, which carries the
DICOM status (PS3.4 Annex B/C, PS3.7 Annex C) and the HTTP status it maps to at the edges
(DIMSE handlers, HTTP routes, CLI).  Handlers translate; they never let a raw exception through.
"""

from __future__ import annotations


class HounsfieldError(Exception):
    """Base of all Hounsfield errors.  ``reason`` is a message a user can act on."""

    http_status: int = 500
    dicom_status: int = 0xC000  # Failure: cannot understand (processing failure family)

    def __init__(self, reason: str, *, detail: object | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class ConfigurationError(HounsfieldError):
    """Settings are missing or inconsistent (e.g. a placeholder secret outside the demo profile)."""

    http_status = 500
    dicom_status = 0x0110  # Processing failure


class InvalidInput(HounsfieldError):
    """Bad client input: a malformed query, a bad parameter value."""

    http_status = 400
    dicom_status = 0xA900  # Identifier does not match SOP class


class InvalidDicom(InvalidInput):
    """A data set that cannot be parsed or lacks what the standard requires.

    Maps to C-STORE 0xC000 (Cannot understand) and HTTP 400 / STOW FailureReason 0xC000.
    """

    dicom_status = 0xC000


class DatasetMismatch(InvalidDicom):
    """Data set does not match the SOP class or the UIDs of the request (C-STORE 0xA900)."""

    dicom_status = 0xA900


class NotFound(HounsfieldError):
    """The requested study / series / instance / object does not exist."""

    http_status = 404
    dicom_status = 0xA801  # Move destination unknown / refused: no match


class Conflict(HounsfieldError):
    """A different object already exists under the same identifier (kept: the first)."""

    http_status = 409
    dicom_status = 0xA700 + 0x11  # Failure family; see ingest for the exact statuses used


class OutOfResources(HounsfieldError):
    """Disk full, too many associations, body too large."""

    http_status = 507
    dicom_status = 0xA700  # Refused: out of resources


class PayloadTooLarge(OutOfResources):
    http_status = 413


class Unauthenticated(HounsfieldError):
    http_status = 401
    dicom_status = 0xC000


class PermissionDenied(HounsfieldError):
    http_status = 403
    dicom_status = 0x0124  # Refused: not authorized


class PeerError(HounsfieldError):
    """A remote DICOM / HTTP peer failed or refused (association rejected, timeout)."""

    http_status = 502
    dicom_status = 0xA702  # Refused: out of resources - unable to perform sub-operations
