"""DIMSE status codes (PS3.4 Annex B/C, PS3.7 Annex C) and the mapping from our exception tree.

Handlers never let an exception through: :func:`store_status` turns a
:class:`~hounsfield.errors.HounsfieldError` (or anything else) into the C-STORE status and the
ErrorComment a peer sees, so the failure reason reaches the sender and the log.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from hounsfield.errors import (
    DatasetMismatch,
    HounsfieldError,
    InvalidDicom,
    OutOfResources,
    PermissionDenied,
)

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01          # C-FIND: optional keys not supported
CANCEL = 0xFE00
# C-STORE (PS3.4 B.2.3)
STORE_OUT_OF_RESOURCES = 0xA700
STORE_DATASET_MISMATCH = 0xA900   # data set does not match SOP class (or the request's UIDs)
STORE_CANNOT_UNDERSTAND = 0xC000
STORE_WARNING_COERCION = 0xB000
STORE_WARNING_MISMATCH = 0xB007
DUPLICATE_SOP_INSTANCE = 0x0111   # PS3.7 C.4: Failure, duplicate SOP instance
NOT_AUTHORIZED = 0x0124           # PS3.7 C.4: Refused, not authorized
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4: Refused, SOP class not supported
PROCESSING_FAILURE = 0x0110
# C-FIND / C-MOVE / C-GET (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
QR_OUT_OF_RESOURCES = 0xA700
QR_OUT_OF_RESOURCES_SUBOPS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
QR_IDENTIFIER_MISMATCH = 0xA900
QR_UNABLE_TO_PROCESS = 0xC000
SUBOPS_WARNING = 0xB000           # one or more sub-operations failed

NAMES = {
    SUCCESS: "Success",
    PENDING: "Pending",
    CANCEL: "Cancel",
    STORE_OUT_OF_RESOURCES: "Refused: out of resources",
    STORE_DATASET_MISMATCH: "Error: data set does not match SOP class",
    STORE_CANNOT_UNDERSTAND: "Error: cannot understand",
    STORE_WARNING_COERCION: "Warning: coercion of data elements",
    DUPLICATE_SOP_INSTANCE: "Failure: duplicate SOP instance",
    NOT_AUTHORIZED: "Refused: not authorized",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP class not supported",
    PROCESSING_FAILURE: "Failure: processing failure",
    QR_OUT_OF_RESOURCES_SUBOPS: "Refused: out of resources, unable to perform sub-operations",
    MOVE_DESTINATION_UNKNOWN: "Refused: move destination unknown",
    SUBOPS_WARNING: "Warning: sub-operations complete, one or more failures",
}


def is_success(status: int) -> bool:
    return status == SUCCESS


def is_warning(status: int) -> bool:
    """PS3.7 C.1: 0001, 0107, 0116 and Bxxx are warnings."""
    return status in (0x0001, 0x0107, 0x0116) or (status & 0xF000) == 0xB000


def is_failure(status: int) -> bool:
    return not (is_success(status) or is_warning(status) or status in (PENDING, PENDING_WARNING,
                                                                         CANCEL))


def name(status: int) -> str:
    return NAMES.get(status, f"0x{status:04X}")


def store_status(exc: BaseException) -> tuple[int, str]:
    """PS3.4 B.2.3 C-STORE status and ErrorComment (<= 64 chars) for an exception."""
    if isinstance(exc, DatasetMismatch):
        status = STORE_DATASET_MISMATCH
    elif isinstance(exc, InvalidDicom):
        status = STORE_CANNOT_UNDERSTAND
    elif isinstance(exc, OutOfResources):
        status = STORE_OUT_OF_RESOURCES
    elif isinstance(exc, PermissionDenied):
        status = NOT_AUTHORIZED
    elif isinstance(exc, HounsfieldError):
        status = PROCESSING_FAILURE
    else:
        status = PROCESSING_FAILURE
    reason = exc.reason if isinstance(exc, HounsfieldError) else f"{type(exc).__name__}: {exc}"
    return status, error_comment(reason)


def error_comment(reason: str) -> str:
    """ErrorComment (0000,0902) is LO: at most 64 characters, no backslash or control chars."""
    text = "".join(c if c.isprintable() and c != "\\" else " " for c in reason)
    return text[:64]


def status_dataset(code: int, comment: str = "") -> Dataset:
    """The status data set a pynetdicom handler returns: Status, and ErrorComment when given."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = error_comment(comment)
    return ds
