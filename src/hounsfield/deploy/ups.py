"""The UPS worklist manager: workitems, the UPS state machine, subscriptions and event reports.

PS3.4 Annex CC (Unified Procedure Step Service) is the behaviour; PS3.18 §11 (the Worklist
Service, UPS-RS) the HTTP face, which ``hounsfield.web.ups_web`` puts over these functions.

- Every change runs in one write transaction (the workitem row is read inside it, locked on
  PostgreSQL, the write lock is taken at BEGIN on SQLite): a refused request changes nothing,
  an accepted one is applied whole together with the event reports it causes.
- State changes follow :data:`TRANSITIONS` — Table CC.1.1-2 as data, one row per request, one
  column per current state — and every refusal is a :class:`UpsRefused` carrying the DICOM
  status of that table, the HTTP status of PS3.18 §11 and the Warning text PS3.18 prescribes.
- Event reports (UPS State Report, Cancel Requested, Progress Report) are rows of
  :class:`~hounsfield.deploy.models.UpsEvent`, one per subscriber, written in the transaction
  of the change: any web process drains them to its WebSocket channel (at least once).
- The Transaction UID lives in its own column and is never returned (PS3.18 §11.5.2).
"""

from __future__ import annotations

import fnmatch
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import delete, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError

from hounsfield.archive.models import utcnow
from hounsfield.audit import Action, Entry, record
from hounsfield.deploy.models import UPS_STATES, UpsEvent, UpsSubscription, UpsWorkitem
from hounsfield.dicom.uids import validate_uid
from hounsfield.errors import HounsfieldError

log = logging.getLogger(__name__)

SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = UPS_STATES
FINAL_STATES = (COMPLETED, CANCELED)
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
#: the well-known UIDs of the Worklist and the Filtered Worklist (PS3.4 CC.3.2; PS3.18 §11.10)
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"
FILTERED_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5.1"

#: Event Type ID (0000,1002) of UPS Event Reports (PS3.4 Table CC.2.4-1)
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, SCP_STATUS_CHANGE, ASSIGNED = 1, 2, 3, 4, 5

#: the standard's meaning of each status we answer (PS3.4 CC.2, PS3.7 Annex C)
STATUS_MEANING: dict[int, str] = {
    0x0000: "Success",
    0x0106: "Invalid attribute value",
    0x0111: "Duplicate SOP Instance",
    0x0120: "Missing attribute",
    0xB300: "The UPS was created with modifications",
    0xB304: "The UPS is already in the requested state of CANCELED",
    0xB306: "The UPS is already in the requested state of COMPLETED",
    0xC300: "The UPS may no longer be updated",
    0xC301: "The correct Transaction UID was not provided",
    0xC302: "The UPS is already IN PROGRESS",
    0xC303: "The UPS may only become SCHEDULED via N-CREATE, not N-SET or N-ACTION",
    0xC304: "The UPS has not met final state requirements for the requested state change",
    0xC307: "Specified SOP Instance UID does not exist or is not a UPS Instance managed by "
            "this SCP",
    0xC308: "Receiving AE-TITLE is Unknown to this SCP",
    0xC309: "The provided value of UPS State was not SCHEDULED",
    0xC310: "The UPS is not yet in the IN PROGRESS state",
    0xC311: "The UPS is already COMPLETED",
}

#: PS3.18 §11 Warning header texts
W_TUID_MISSING = "The Transaction UID is missing."
W_TUID_WRONG = "The Transaction UID is incorrect."
W_INCONSISTENT = "The submitted request is inconsistent with the state of the UPS Instance."
W_ALREADY_CANCELED = "The UPS is already in the requested state of CANCELED."
W_ALREADY_COMPLETED = "The UPS is already in the requested state of COMPLETED."
W_CREATED_MODIFIED = "The Workitem was created with modifications."
W_UPDATED_MODIFIED = "The Workitem was updated with modifications."
W_NOT_CLAIMED = "The target URI did not reference a claimed Workitem."


class UpsRefused(HounsfieldError):
    """A UPS request refused: the DICOM status (``dicom_status``), the HTTP status and the
    PS3.18 Warning text, with ``reason`` saying in words what was wrong."""

    def __init__(self, dicom_status: int, http_status: int, reason: str,
                 warning: str = "") -> None:
        super().__init__(reason)
        self.dicom_status = dicom_status
        self.http_status = http_status
        self.warning = warning


@dataclass
class Answer:
    """What an accepted request led to: the workitem, warnings (PS3.18 Warning header texts
    with their DICOM warning status) and, for a create, whether it was modified."""

    uid: str
    state: str = ""
    warnings: list[tuple[int, str]] = field(default_factory=list)


# -- the state machine: PS3.4 Table CC.1.1-2 as data ------------------------------------------
# (requested state, Transaction UID correct?) -> current state -> (verdict, status).  A verdict
# is "change" (do it), "final" (do it if the Final State requirements are met, else C304),
# "warn" (nothing to do, success with a warning) or "error".  For a SCHEDULED workitem, whose
# lock is not set yet, "correct" means "a Transaction UID was supplied".
_ALL_C301 = {s: ("error", 0xC301) for s in UPS_STATES}
TRANSITIONS: dict[tuple[str, bool], dict[str, tuple[str, int]]] = {
    (IN_PROGRESS, True): {SCHEDULED: ("change", 0), IN_PROGRESS: ("error", 0xC302),
                          COMPLETED: ("error", 0xC300), CANCELED: ("error", 0xC300)},
    (IN_PROGRESS, False): _ALL_C301,
    (SCHEDULED, True): {s: ("error", 0xC303) for s in UPS_STATES},
    (SCHEDULED, False): {s: ("error", 0xC303) for s in UPS_STATES},
    (COMPLETED, True): {SCHEDULED: ("error", 0xC310), IN_PROGRESS: ("final", 0),
                        COMPLETED: ("warn", 0xB306), CANCELED: ("error", 0xC300)},
    (COMPLETED, False): _ALL_C301,
    (CANCELED, True): {SCHEDULED: ("error", 0xC310), IN_PROGRESS: ("final", 0),
                       COMPLETED: ("error", 0xC300), CANCELED: ("warn", 0xB304)},
    (CANCELED, False): _ALL_C301,
}
#: Request UPS Cancel, per current state (same table, row "N-ACTION to Request Cancel")
REQUEST_CANCEL: dict[str, tuple[str, int]] = {
    SCHEDULED: ("cancel", 0), IN_PROGRESS: ("notify", 0),
    COMPLETED: ("error", 0xC311), CANCELED: ("warn", 0xB304)}

#: HTTP status of each refusal (PS3.18 Tables 11.4.3-1 .. 11.8.3-1): a missing or wrong
#: Transaction UID and an illegal request are 400; a request the workitem's state forbids is
#: 409; an unknown workitem 404
HTTP_STATUS: dict[int, int] = {0xC301: 400, 0xC303: 400, 0xC309: 400, 0x0106: 400,
                               0x0120: 400, 0xC307: 404, 0xC300: 409, 0xC302: 409,
                               0xC304: 409, 0xC310: 409, 0xC311: 409, 0x0111: 409}


def transition(requested: str, current: str, tuid_ok: bool) -> tuple[str, int]:
    """The verdict of Table CC.1.1-2 for a Change State request."""
    return TRANSITIONS[(requested, tuid_ok)][current]


def _refuse(code: int, reason: str, warning: str = "", http: int | None = None) -> UpsRefused:
    if not warning:
        warning = {0xC307: "", 0xC301: W_TUID_WRONG}.get(code, W_INCONSISTENT)
    return UpsRefused(code, http or HTTP_STATUS.get(code, 400),
                      f"{reason} (DICOM status {code:04X}H: {STATUS_MEANING.get(code, '')})",
                      warning)


# -- DICOM JSON helpers ----------------------------------------------------------------------

def tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def value(ds: dict, keyword: str, default: Any = None) -> Any:
    """The first value of ``keyword`` in a DICOM JSON data set (``default`` when absent)."""
    el = ds.get(tag(keyword)) or {}
    vals = el.get("Value") or []
    return vals[0] if vals else default


def element(keyword: str, *vals: Any) -> dict:
    t = tag_for_keyword(keyword)
    return {"vr": dictionary_VR(t), "Value": list(vals)} if vals else {"vr": dictionary_VR(t)}


def _now_dt() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")


def parse_dataset(body: Any, what: str = "workitem") -> dict:
    """One DICOM JSON data set from a request body (an array of one, or the object itself),
    checked by pydicom's reader (PS3.18 Annex F); :class:`UpsRefused` 400 otherwise."""
    if isinstance(body, list):
        if len(body) != 1:
            raise UpsRefused(0x0106, 400, f"the {what} payload must be a JSON array of exactly "
                             f"one data set, got {len(body)}")
        body = body[0]
    if not isinstance(body, dict):
        raise UpsRefused(0x0106, 400, f"the {what} payload must be a DICOM JSON data set "
                         "(an object keyed by tags such as \"00741000\")")
    for key, el in body.items():
        if not (isinstance(key, str) and len(key) == 8 and all(c in "0123456789abcdefABCDEF"
                                                               for c in key)):
            raise UpsRefused(0x0106, 400, f"{what}: {key!r} is not a tag (8 hex digits)")
        if not isinstance(el, dict) or "vr" not in el:
            raise UpsRefused(0x0106, 400, f"{what}: element {key} has no \"vr\"")
    try:
        Dataset.from_json({k.upper(): v for k, v in body.items()})
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad JSON
        raise UpsRefused(0x0106, 400, f"{what}: not valid DICOM JSON ({exc})") from None
    return {k.upper(): v for k, v in body.items()}


def public(ds: dict) -> dict:
    """The workitem as returned (Retrieve, Search): never its Transaction UID."""
    return {k: v for k, v in sorted(ds.items()) if k != tag("TransactionUID")}


def study_of(ds: dict) -> str:
    """The study a workitem works on: Input Information Sequence, else Referenced Request
    Sequence, else a top-level Study Instance UID."""
    for seq in ("InputInformationSequence", "ReferencedRequestSequence"):
        for item in (ds.get(tag(seq)) or {}).get("Value") or []:
            uid = value(item, "StudyInstanceUID")
            if uid:
                return str(uid)
    return str(value(ds, "StudyInstanceUID", "") or "")


# -- matching (Search and Filtered Worklist Subscription; PS3.18 §8.3.4) ---------------------

def _path(key: str) -> list[int]:
    tags = []
    for part in key.split("."):
        t = None
        if len(part) == 8 and all(c in "0123456789abcdefABCDEF" for c in part):
            t = int(part, 16)
        else:
            t = tag_for_keyword(part)
        if t is None:
            raise UpsRefused(0x0106, 400, f"unknown attribute {part!r} in matching key {key!r}")
        tags.append(t)
    return tags


def _element_matches(vr: str, vals: list, want: str) -> bool:
    if want == "":
        return True  # universal matching
    if vr == "SQ":
        return True
    texts = []
    for v in vals:
        if isinstance(v, dict):  # PN
            texts.append(str(v.get("Alphabetic", "")))
        else:
            texts.append(str(v))
    if vr == "UI":
        wanted = {w.strip() for w in want.split(",")}
        return any(t in wanted for t in texts)
    if vr in ("DA", "DT", "TM") and "-" in want:
        lo, _, hi = want.partition("-")
        return any((not lo or t >= lo) and (not hi or t[:len(hi)] <= hi) for t in texts)
    if vr == "PN":
        return any(fnmatch.fnmatchcase(t.upper(), want.upper()) for t in texts)
    return any(fnmatch.fnmatchcase(t, want) for t in texts)


def _matches(ds: dict, tags: list[int], want: str) -> bool:
    key = f"{tags[0]:08X}"
    el = ds.get(key)
    if len(tags) > 1:
        items = (el or {}).get("Value") or []
        return want == "" or any(_matches(item, tags[1:], want) for item in items)
    if el is None:
        return want == ""
    return _element_matches(el.get("vr", dictionary_VR(tags[0])), el.get("Value") or [], want)


def matcher(params: list[tuple[str, str]]) -> list[tuple[list[int], str]]:
    """Matching keys as (tag path, value); :class:`UpsRefused` 400 for an unknown attribute."""
    return [(_path(k), v) for k, v in params]


def match(ds: dict, keys: list[tuple[list[int], str]]) -> bool:
    return all(_matches(ds, path, want) for path, want in keys)


# -- audit and events ------------------------------------------------------------------------

def audit(archive, actor: str, detail: str, study: str = "") -> None:  # noqa: ANN001
    try:
        record(archive, Entry(Action.UPS, actor=actor or "system", study_instance_uid=study,
                              detail=detail))
    except Exception as exc:  # noqa: BLE001 - the audit trail logs its own failures
        log.warning("audit of %r failed: %s", detail, exc)


def _report(uid: str, event_type: int, info: dict) -> dict:
    return {"00000002": element("AffectedSOPClassUID", UPS_PUSH_SOP_CLASS),
            "00001000": element("AffectedSOPInstanceUID", uid),
            "00001002": element("EventTypeID", event_type), **info}


def _state_info(ds: dict, state: str) -> dict:
    info = {tag("ProcedureStepState"): element("ProcedureStepState", state),
            tag("InputReadinessState"): element(
                "InputReadinessState", value(ds, "InputReadinessState", "READY"))}
    if state == CANCELED:
        for item in (ds.get(tag("ProcedureStepProgressInformationSequence")) or {}).get(
                "Value") or []:
            for kw in ("ReasonForCancellation", "ProcedureStepDiscontinuationReasonCodeSequence"):
                if tag(kw) in item:
                    info[tag(kw)] = item[tag(kw)]
    return info


def _emit(s, uid: str, event_type: int, info: dict, aes: list[str] | None = None) -> int:  # noqa: ANN001
    """Queue one Event Report per subscriber of ``uid`` (or to ``aes``), in ``s``'s
    transaction."""
    if aes is None:
        aes = list(s.scalars(select(UpsSubscription.ae_title).where(
            UpsSubscription.kind == "workitem", UpsSubscription.workitem_uid == uid)))
    payload = _report(uid, event_type, info)
    for ae in aes:
        s.add(UpsEvent(ae_title=ae, workitem_uid=uid, event_type=event_type, payload=payload))
    return len(aes)


def _locked(s, uid: str) -> UpsWorkitem:  # noqa: ANN001
    row = s.get(UpsWorkitem, uid, with_for_update=True)
    if row is None:
        raise _refuse(0xC307, f"no workitem {uid}")
    return row


# -- Create (N-CREATE; PS3.18 §11.4) ---------------------------------------------------------

_PRIORITIES = ("HIGH", "MEDIUM", "LOW")
_READINESS = ("READY", "UNAVAILABLE", "INCOMPLETE")


def create(archive, body: Any, *, uid: str | None = None, actor: str = "",  # noqa: ANN001
           worklist_label: str = "HOUNSFIELD") -> Answer:
    """Create a SCHEDULED workitem (PS3.4 CC.2.5.3 SCP behaviour).  The UID comes from the
    query (``uid``) or the data set's SOP Instance UID; Procedure Step State must be SCHEDULED
    (C309) and no Transaction UID may be set; Scheduled Procedure Step Priority, Procedure Step
    Label, Input Readiness State and Scheduled Procedure Step Start DateTime are required
    (missing: 0120H, invalid: 0106H).  SOP Class UID, Worklist Label and an empty Transaction
    UID are filled in when absent (Warning "created with modifications", B300H).  A UID that
    exists already is 409 (0111H)."""
    ds = parse_dataset(body)
    warnings: list[tuple[int, str]] = []
    modified = False
    in_ds = value(ds, "SOPInstanceUID")
    if uid and in_ds and uid != in_ds:
        raise UpsRefused(0x0106, 400, f"the workitem UID of the query ({uid}) differs from the "
                         f"data set's SOP Instance UID ({in_ds})")
    uid = uid or in_ds
    if not uid:
        raise UpsRefused(0x0120, 400, "the workitem UID is missing: give it as the query "
                         "(POST /workitems?{uid}) or as SOP Instance UID (00080018)")
    ok, why = validate_uid(uid)
    if not ok:
        raise UpsRefused(0x0106, 400, f"workitem UID: {why}")
    state = value(ds, "ProcedureStepState")
    if state != SCHEDULED:
        raise _refuse(0xC309, f"Procedure Step State (00741000) must be SCHEDULED on create, "
                      f"got {state!r}", warning="", http=400)
    if value(ds, "TransactionUID"):
        raise UpsRefused(0x0106, 400, "a new workitem has no Transaction UID (00081195); it "
                         "is set when a performer claims the workitem")
    required = {"ScheduledProcedureStepPriority": _PRIORITIES, "ProcedureStepLabel": None,
                "InputReadinessState": _READINESS, "ScheduledProcedureStepStartDateTime": None}
    for kw, allowed in required.items():
        v = value(ds, kw)
        if v in (None, ""):
            raise UpsRefused(0x0120, 400, f"{kw} ({tag(kw)}) is required on create (PS3.4 "
                             "Table CC.2.5-3, N-CREATE type 1)")
        if allowed and v not in allowed:
            raise UpsRefused(0x0106, 400, f"{kw} must be one of {', '.join(allowed)}, got {v!r}")
    cls = value(ds, "SOPClassUID")
    if cls and cls != UPS_PUSH_SOP_CLASS:
        raise UpsRefused(0x0106, 400, f"SOP Class UID must be UPS Push ({UPS_PUSH_SOP_CLASS})")
    for kw, v in (("SOPClassUID", UPS_PUSH_SOP_CLASS), ("SOPInstanceUID", uid),
                  ("WorklistLabel", worklist_label)):
        if not value(ds, kw):
            ds[tag(kw)] = element(kw, v)
            modified = modified or kw != "SOPInstanceUID"
    ds.pop(tag("TransactionUID"), None)
    if modified:
        warnings.append((0xB300, W_CREATED_MODIFIED))
    study = study_of(ds)
    try:
        with archive.write_session() as s, s.begin():
            if s.get(UpsWorkitem, uid) is not None:
                raise UpsRefused(0x0111, 409, f"workitem {uid} exists already")
            s.add(UpsWorkitem(uid=uid, state=SCHEDULED, transaction_uid="", dataset=ds,
                              study_instance_uid=study[:64], created_by=actor[:128]))
            s.flush()
            _subscribe_globals(s, uid, ds)
    except IntegrityError:
        raise UpsRefused(0x0111, 409, f"workitem {uid} exists already") from None
    audit(archive, actor, f"workitem {uid} created (SCHEDULED)", study)
    return Answer(uid, SCHEDULED, warnings)


def _subscribe_globals(s, uid: str, ds: dict) -> None:  # noqa: ANN001
    """A new workitem: every AE with an active Worklist subscription (or a Filtered one that
    matches it) is subscribed to it and told its state (PS3.4 CC.2.3.3)."""
    subs = s.scalars(select(UpsSubscription).where(
        UpsSubscription.kind.in_(("global", "filtered")),
        UpsSubscription.suspended.is_(False))).all()
    aes: dict[str, bool] = {}
    for sub in subs:
        if sub.kind == "filtered" and not match(ds, matcher(list(sub.filter.items()))):
            continue
        aes[sub.ae_title] = aes.get(sub.ae_title, False) or sub.deletion_lock
    for ae, lock in aes.items():
        s.add(UpsSubscription(ae_title=ae, kind="workitem", workitem_uid=uid, filter={},
                              deletion_lock=lock))
    if aes:
        _emit(s, uid, STATE_REPORT, _state_info(ds, SCHEDULED), list(aes))


# -- Retrieve and Search (N-GET, C-FIND; PS3.18 §11.5, §11.9) ---------------------------------

def get(archive, uid: str) -> dict:  # noqa: ANN001
    with archive.session() as s:
        row = s.get(UpsWorkitem, uid)
        if row is None:
            raise _refuse(0xC307, f"no workitem {uid}")
        return public(row.dataset)


def get_row(archive, uid: str) -> UpsWorkitem:  # noqa: ANN001
    with archive.session() as s:
        row = s.get(UpsWorkitem, uid)
        if row is None:
            raise _refuse(0xC307, f"no workitem {uid}")
        s.expunge(row)
        return row


def search(archive, params: list[tuple[str, str]], *, limit: int | None = None,  # noqa: ANN001
           offset: int = 0) -> list[dict]:
    """Workitems matching every key (single value, wildcards * ?, UID lists, DA/DT/TM ranges,
    ``Sequence.Attribute`` for items), oldest first."""
    keys = matcher(params)
    states = [v for k, v in params if k in ("ProcedureStepState", "00741000") and v
              and "*" not in v and "?" not in v]
    q = select(UpsWorkitem).order_by(UpsWorkitem.created_at, UpsWorkitem.uid)
    if states:
        q = q.where(UpsWorkitem.state == states[0])
    out = []
    with archive.session() as s:
        for row in s.scalars(q):
            if match(row.dataset, keys):
                out.append(public(row.dataset))
    out = out[offset:]
    return out[:limit] if limit is not None else out


# -- Update (N-SET; PS3.18 §11.6) ------------------------------------------------------------

_NOT_SETTABLE = ("ProcedureStepState", "TransactionUID", "SOPInstanceUID", "SOPClassUID")


def _check_lock(row: UpsWorkitem, tuid: str | None) -> None:
    if not tuid:
        raise _refuse(0xC301, f"workitem {row.uid} is IN PROGRESS: the request must carry its "
                      "Transaction UID", warning=W_TUID_MISSING)
    if tuid != row.transaction_uid:
        raise _refuse(0xC301, f"the Transaction UID given does not hold workitem {row.uid}",
                      warning=W_TUID_WRONG)


def update(archive, uid: str, body: Any, *, transaction_uid: str | None,  # noqa: ANN001
           actor: str = "") -> Answer:
    """Set attributes of a workitem (PS3.4 CC.2.6).  SCHEDULED: anyone; IN PROGRESS: only with
    its Transaction UID (C301); COMPLETED/CANCELED: never (C300, 400 as PS3.18 §11.6.2 says).
    The state, Transaction UID, SOP Class and Instance UIDs cannot be set (0106H).  A changed
    Procedure Step Progress Information Sequence is sent to subscribers as a Progress
    Report."""
    ds_in = parse_dataset(body, "update")
    for kw in _NOT_SETTABLE:
        if tag(kw) in ds_in:
            how = ("Change State (PUT /workitems/{uid}/state)" if kw == "ProcedureStepState"
                   else "nothing")
            raise UpsRefused(0x0106, 400, f"{kw} ({tag(kw)}) cannot be set by an update; it "
                             f"changes through {how}")
    with archive.write_session() as s, s.begin():
        row = _locked(s, uid)
        if row.state in FINAL_STATES:
            raise _refuse(0xC300, f"workitem {uid} is {row.state}: a final state cannot be "
                          "updated", http=400)
        if row.state == IN_PROGRESS:
            _check_lock(row, transaction_uid)
        ds = dict(row.dataset)
        ds.update(ds_in)
        row.dataset = ds
        row.study_instance_uid = study_of(ds)[:64]
        row.updated_at = utcnow()
        progress = tag("ProcedureStepProgressInformationSequence")
        if progress in ds_in:
            _emit(s, uid, PROGRESS_REPORT, {progress: ds_in[progress]})
            pct = value(value(ds_in, "ProcedureStepProgressInformationSequence", {}) or {},
                        "ProcedureStepProgress")
            row.progress = int(pct) if isinstance(pct, (int, float)) else row.progress
        state, study = row.state, row.study_instance_uid
    audit(archive, actor, f"workitem {uid} updated: " + ", ".join(
        keyword_for_tag(int(k, 16)) or k for k in sorted(ds_in)), study)
    return Answer(uid, state)


def set_job(archive, uid: str, job_id: str) -> None:  # noqa: ANN001
    """Record the AI job our performer fired for a workitem it holds."""
    with archive.write_session() as s, s.begin():
        _locked(s, uid).job_id = job_id[:64]


# -- Change State (N-ACTION type 1; PS3.18 §11.7) ---------------------------------------------

def _final_ready(ds: dict, requested: str) -> str:
    """'' when the Final State requirements (PS3.4 Table CC.2.5-3) hold for ``requested``,
    else what is missing.  COMPLETED needs the Unified Procedure Step Performed Procedure
    Sequence (00741216) with Performed Procedure Step Start DateTime and the Output
    Information Sequence (type 2, may be empty); missing End DateTimes are filled in."""
    if requested != COMPLETED:
        return ""
    items = (ds.get(tag("UnifiedProcedureStepPerformedProcedureSequence")) or {}).get(
        "Value") or []
    if not items:
        return ("Unified Procedure Step Performed Procedure Sequence (00741216) is missing: "
                "update the workitem with it (start/end DateTime, Output Information "
                "Sequence) before COMPLETED")
    item = items[0]
    if not value(item, "PerformedProcedureStepStartDateTime"):
        return "Performed Procedure Step Start DateTime (00404050) is missing in 00741216"
    if tag("OutputInformationSequence") not in item:
        return "Output Information Sequence (00404033) is missing in 00741216 (may be empty)"
    return ""


def _finalise(ds: dict, requested: str) -> dict:
    ds = dict(ds)
    now = _now_dt()
    if requested == COMPLETED:
        seq = ds[tag("UnifiedProcedureStepPerformedProcedureSequence")]
        item = dict(seq["Value"][0])
        if not value(item, "PerformedProcedureStepEndDateTime"):
            item[tag("PerformedProcedureStepEndDateTime")] = element(
                "PerformedProcedureStepEndDateTime", now)
        ds[tag("UnifiedProcedureStepPerformedProcedureSequence")] = {
            "vr": "SQ", "Value": [item, *seq["Value"][1:]]}
    else:
        key = tag("ProcedureStepProgressInformationSequence")
        items = (ds.get(key) or {}).get("Value") or [{}]
        item = dict(items[0])
        if not value(item, "ProcedureStepCancellationDateTime"):
            item[tag("ProcedureStepCancellationDateTime")] = element(
                "ProcedureStepCancellationDateTime", now)
        ds[key] = {"vr": "SQ", "Value": [item]}
    ds[tag("ProcedureStepState")] = element("ProcedureStepState", requested)
    return ds


def _parse_state_body(body: Any) -> tuple[str, str]:
    ds = parse_dataset(body, "change-state")
    state = value(ds, "ProcedureStepState")
    if state == "CANCELLED":  # the spelling of PS3.18 §11.7.1.4
        state = CANCELED
    if state not in UPS_STATES:
        raise UpsRefused(0x0106, 400, "Procedure Step State (00741000) must be IN PROGRESS, "
                         f"COMPLETED or CANCELED, got {state!r}")
    return state, str(value(ds, "TransactionUID", "") or "")


def change_state(archive, uid: str, body: Any, *, actor: str = "",  # noqa: ANN001
                 performer: str = "", job_id: str = "") -> Answer:
    """Change a workitem's state by Table CC.1.1-2 (:data:`TRANSITIONS`); the new state is
    reported to subscribers in the same transaction.  ``performer``/``job_id``: our own
    performer claiming it (recorded with the claim, in the same transaction)."""
    requested, tuid = _parse_state_body(body)
    if tuid:
        ok, why = validate_uid(tuid)
        if not ok:
            raise UpsRefused(0x0106, 400, f"Transaction UID: {why}")
    with archive.write_session() as s, s.begin():
        row = _locked(s, uid)
        tuid_ok = bool(tuid) and (row.state == SCHEDULED or tuid == row.transaction_uid)
        verdict, code = transition(requested, row.state, tuid_ok)
        if verdict == "error":
            if code == 0xC301:
                raise _refuse(code, f"changing workitem {uid} ({row.state}) to {requested} "
                              "needs " + ("a new Transaction UID" if row.state == SCHEDULED
                                          else "the Transaction UID that claimed it"),
                              warning=W_TUID_WRONG if tuid else W_TUID_MISSING)
            raise _refuse(code, f"workitem {uid} is {row.state}: it cannot become {requested}")
        if verdict == "warn":
            return Answer(uid, row.state, [(code, W_ALREADY_CANCELED if code == 0xB304
                                            else W_ALREADY_COMPLETED)])
        if verdict == "final":
            missing = _final_ready(row.dataset, requested)
            if missing:
                raise _refuse(0xC304, f"workitem {uid} cannot be {requested}: {missing}")
            row.dataset = _finalise(row.dataset, requested)
        else:  # SCHEDULED -> IN PROGRESS: record the lock
            row.transaction_uid = tuid
            row.performer = performer[:32]
            row.job_id = job_id[:64]
            ds = dict(row.dataset)
            ds[tag("ProcedureStepState")] = element("ProcedureStepState", IN_PROGRESS)
            row.dataset = ds
        row.state = requested
        row.updated_at = utcnow()
        _emit(s, uid, STATE_REPORT, _state_info(row.dataset, requested))
        study = row.study_instance_uid
    audit(archive, actor, f"workitem {uid} -> {requested}", study)
    return Answer(uid, requested)


# -- Request Cancellation (N-ACTION type 2; PS3.18 §11.8) -------------------------------------

def request_cancel(archive, uid: str, body: Any = None, *, actor: str = "",  # noqa: ANN001
                   requesting_ae: str = "") -> Answer:
    """Ask for a workitem to be canceled.  SCHEDULED: the manager cancels it itself (reported
    as IN PROGRESS, then CANCELED, with the reason given); IN PROGRESS: subscribers (and our
    performer, when it holds the workitem) are told, and the performer decides; COMPLETED:
    refused (C311, 409); CANCELED already: success with warning B304."""
    info = parse_dataset(body, "cancel request") if body not in (None, b"", "", [], {}) else {}
    reason = str(value(info, "ReasonForCancellation", "") or "")
    with archive.write_session() as s, s.begin():
        row = _locked(s, uid)
        verdict, code = REQUEST_CANCEL[row.state]
        if verdict == "error":
            raise _refuse(code, f"workitem {uid} is COMPLETED: it can no longer be canceled")
        if verdict == "warn":
            return Answer(uid, row.state, [(code, W_ALREADY_CANCELED)])
        note = {tag(k): info[tag(k)] for k in ("ReasonForCancellation", "ContactURI",
                                               "ContactDisplayName",
                                               "ProcedureStepDiscontinuationReasonCodeSequence")
                if tag(k) in info}
        if requesting_ae:
            note[tag("RequestingAE")] = element("RequestingAE", requesting_ae[:16])
        if verdict == "cancel":
            ds = dict(row.dataset)
            item = {k: v for k, v in note.items() if k != tag("RequestingAE")}
            if tag("ReasonForCancellation") not in item:
                item[tag("ReasonForCancellation")] = element(
                    "ReasonForCancellation", f"cancel requested by {actor or 'a user'}"[:64])
            ds[tag("ProcedureStepProgressInformationSequence")] = {"vr": "SQ", "Value": [item]}
            row.transaction_uid = "2.25." + str(uuid.uuid4().int)
            _emit(s, uid, STATE_REPORT, _state_info(ds, IN_PROGRESS))
            row.dataset = _finalise(ds, CANCELED)
            row.state = CANCELED
            _emit(s, uid, STATE_REPORT, _state_info(row.dataset, CANCELED))
        else:
            row.cancel_requested = True
            row.cancel_reason = reason or f"cancel requested by {actor or 'a user'}"
            _emit(s, uid, CANCEL_REQUESTED, note)
        row.updated_at = utcnow()
        state, study = row.state, row.study_instance_uid
    audit(archive, actor, f"workitem {uid}: cancellation requested ({state})", study)
    return Answer(uid, state)


# -- Subscriptions (N-ACTION types 3-5; PS3.18 §11.10-11.11) ----------------------------------

def check_ae(ae: str) -> str:
    ae = (ae or "").strip()
    if not ae or len(ae) > 16 or any(c == "\\" or ord(c) < 32 or ord(c) > 126 for c in ae):
        raise UpsRefused(0xC308, 400, f"{ae!r} is not an AE title (1-16 printable characters, "
                         "no backslash)")
    return ae


def parse_filter(text: str) -> dict[str, str]:
    """``filter=attr=value,attr=value`` of a Filtered Worklist subscription."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, eq, v = part.partition("=")
        if not eq or not k.strip():
            raise UpsRefused(0x0106, 400, f"filter item {part!r} is not attribute=value")
        out[k.strip()] = v.strip()
    if not out:
        raise UpsRefused(0x0106, 400, "a Filtered Worklist subscription needs a filter "
                         "(filter=attribute=value,...)")
    matcher(list(out.items()))
    return out


def subscribe(archive, uid: str, ae: str, *, deletion_lock: bool = False,  # noqa: ANN001
              filter_text: str | None = None, actor: str = "") -> Answer:
    """Subscribe ``ae`` to a workitem, to the Worklist (:data:`GLOBAL_SUBSCRIPTION_UID`) or to
    the Filtered Worklist.  A worklist subscription also subscribes ``ae`` to every SCHEDULED
    or IN PROGRESS workitem (matching the filter), and each subscribed workitem's current state
    is reported at once (PS3.4 CC.2.3.3).  Subscribing again replaces the old subscription."""
    ae = check_ae(ae)
    kind = {GLOBAL_SUBSCRIPTION_UID: "global", FILTERED_SUBSCRIPTION_UID: "filtered"}.get(
        uid, "workitem")
    filt = parse_filter(filter_text or "") if kind == "filtered" else {}
    with archive.write_session() as s, s.begin():
        if kind == "workitem":
            rows = [_locked(s, uid)]
        else:
            keys = matcher(list(filt.items()))
            rows = [r for r in s.scalars(select(UpsWorkitem).where(
                UpsWorkitem.state.in_((SCHEDULED, IN_PROGRESS))).order_by(
                UpsWorkitem.created_at)) if match(r.dataset, keys)]
            s.execute(delete(UpsSubscription).where(
                UpsSubscription.ae_title == ae, UpsSubscription.kind == kind))
            s.add(UpsSubscription(ae_title=ae, kind=kind, workitem_uid="", filter=filt,
                                  deletion_lock=deletion_lock))
        for row in rows:
            old = s.scalars(select(UpsSubscription).where(
                UpsSubscription.ae_title == ae, UpsSubscription.kind == "workitem",
                UpsSubscription.workitem_uid == row.uid)).first()
            if old is None:
                s.add(UpsSubscription(ae_title=ae, kind="workitem", workitem_uid=row.uid,
                                      filter={}, deletion_lock=deletion_lock))
            else:
                old.deletion_lock = deletion_lock
            _emit(s, row.uid, STATE_REPORT, _state_info(row.dataset, row.state), [ae])
    audit(archive, actor, f"{ae} subscribed to {kind} {uid}"
           + (f" filter {filt}" if filt else ""))
    return Answer(uid)


def unsubscribe(archive, uid: str, ae: str, *, actor: str = "") -> Answer:  # noqa: ANN001
    """Remove a workitem subscription; for the (Filtered) Worklist UID, the worklist
    subscription and every workitem subscription of ``ae`` (PS3.4 CC.2.3.3)."""
    ae = check_ae(ae)
    with archive.write_session() as s, s.begin():
        if uid in (GLOBAL_SUBSCRIPTION_UID, FILTERED_SUBSCRIPTION_UID):
            kind = "global" if uid == GLOBAL_SUBSCRIPTION_UID else "filtered"
            n = s.execute(delete(UpsSubscription).where(
                UpsSubscription.ae_title == ae, UpsSubscription.kind == kind)).rowcount
            if not n:
                raise UpsRefused(0xC307, 404, f"{ae} has no {kind} worklist subscription")
            s.execute(delete(UpsSubscription).where(UpsSubscription.ae_title == ae,
                                                    UpsSubscription.kind == "workitem"))
        else:
            n = s.execute(delete(UpsSubscription).where(
                UpsSubscription.ae_title == ae, UpsSubscription.kind == "workitem",
                UpsSubscription.workitem_uid == uid)).rowcount
            if not n:
                raise UpsRefused(0xC307, 404, f"{ae} is not subscribed to workitem {uid}")
    audit(archive, actor, f"{ae} unsubscribed from {uid}")
    return Answer(uid)


def suspend(archive, ae: str, *, actor: str = "") -> Answer:  # noqa: ANN001
    """Suspend ``ae``'s worklist subscriptions: no new workitems are subscribed, the existing
    workitem subscriptions stay (PS3.4 CC.2.3.3, Suspend Global Subscription)."""
    ae = check_ae(ae)
    with archive.write_session() as s, s.begin():
        n = s.execute(sql_update(UpsSubscription).where(
            UpsSubscription.ae_title == ae, UpsSubscription.kind.in_(("global", "filtered")))
            .values(suspended=True)).rowcount
        if not n:
            raise UpsRefused(0xC307, 404, f"{ae} has no worklist subscription to suspend")
    audit(archive, actor, f"{ae} worklist subscription suspended")
    return Answer(GLOBAL_SUBSCRIPTION_UID)


def subscriptions(archive, ae: str | None = None) -> list[UpsSubscription]:  # noqa: ANN001
    with archive.session() as s:
        q = select(UpsSubscription).order_by(UpsSubscription.id)
        if ae:
            q = q.where(UpsSubscription.ae_title == ae)
        rows = list(s.scalars(q))
        for r in rows:
            s.expunge(r)
        return rows


# -- the event outbox (drained by the WebSocket channel) -------------------------------------

def pending_events(archive, ae: str, limit: int = 100) -> list[tuple[int, dict]]:  # noqa: ANN001
    """(event id, Event Report) not yet delivered to ``ae``, oldest first."""
    with archive.session() as s:
        return [(e.id, e.payload) for e in s.scalars(
            select(UpsEvent).where(UpsEvent.ae_title == ae, UpsEvent.delivered_at.is_(None))
            .order_by(UpsEvent.id).limit(limit))]


def mark_delivered(archive, ids: list[int]) -> None:  # noqa: ANN001
    if not ids:
        return
    with archive.write_session() as s, s.begin():
        s.execute(sql_update(UpsEvent).where(UpsEvent.id.in_(ids)).values(delivered_at=utcnow()))
