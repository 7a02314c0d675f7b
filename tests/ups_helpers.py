"""UPS-RS client side for tests: workitems built with pydicom (not our code) and plain HTTP
calls (``requests``) — dicomweb-client has no UPS-RS support."""

from __future__ import annotations

import json

import requests
from pydicom import Dataset
from pydicom.uid import generate_uid

DICOM_JSON = "application/dicom+json"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"


def code(scheme: str, value: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def workitem(study_uid: str, *, uid: str | None = None, label: str = "AI chest CT",
             priority: str = "MEDIUM", codes: tuple[str, str, str] = (
                 "DCM", "110004", "Computer Aided Detection"),
             patient: str = "UPS^TEST", series_uid: str | None = None) -> tuple[str, dict]:
    """(uid, DICOM JSON) of a SCHEDULED workitem asking for ``codes`` on ``study_uid``."""
    uid = uid or generate_uid()
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.34.6.1"
    ds.SOPInstanceUID = uid
    ds.PatientName = patient
    ds.PatientID = "UPS-1"
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = priority
    ds.ProcedureStepLabel = label
    ds.WorklistLabel = "AI"
    ds.InputReadinessState = "READY"
    ds.ScheduledProcedureStepStartDateTime = "20261202080000"
    ds.ScheduledWorkitemCodeSequence = [code(*codes)]
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.SeriesInstanceUID = series_uid or generate_uid()
    item.TypeOfInstances = "DICOM"
    item.ReferencedSOPSequence = []
    ds.InputInformationSequence = [item]
    return uid, ds.to_json_dict()


def state_body(state: str, tuid: str | None) -> list[dict]:
    ds = Dataset()
    ds.ProcedureStepState = state
    if tuid:
        ds.TransactionUID = tuid
    return [ds.to_json_dict()]


class UpsClient:
    """The UPS-RS transactions as plain HTTP."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.h = {"Authorization": f"Bearer {token}"}

    def _send(self, method: str, path: str, body=None, **kw) -> requests.Response:  # noqa: ANN001
        headers = dict(self.h)
        data = None
        if body is not None:
            headers["Content-Type"] = DICOM_JSON
            data = json.dumps(body)
        return requests.request(method, self.base + path, data=data, headers=headers,
                                timeout=30, **kw)

    def create(self, uid: str | None, ds: dict) -> requests.Response:
        return self._send("POST", "/workitems" + (f"?{uid}" if uid else ""), [ds])

    def get(self, uid: str) -> requests.Response:
        return self._send("GET", f"/workitems/{uid}")

    def search(self, **params: str) -> requests.Response:
        return self._send("GET", "/workitems", params=params)

    def update(self, uid: str, ds: dict, tuid: str | None = None) -> requests.Response:
        return self._send("POST", f"/workitems/{uid}" + (f"?{tuid}" if tuid else ""), [ds])

    def state(self, uid: str, state: str, tuid: str | None) -> requests.Response:
        return self._send("PUT", f"/workitems/{uid}/state", state_body(state, tuid))

    def cancel(self, uid: str, reason: str = "") -> requests.Response:
        body = None
        if reason:
            ds = Dataset()
            ds.ReasonForCancellation = reason
            body = [ds.to_json_dict()]
        return self._send("POST", f"/workitems/{uid}/cancelrequest", body)

    def subscribe(self, uid: str, ae: str, **params: str) -> requests.Response:
        return self._send("POST", f"/workitems/{uid}/subscribers/{ae}", params=params)

    def unsubscribe(self, uid: str, ae: str) -> requests.Response:
        return self._send("DELETE", f"/workitems/{uid}/subscribers/{ae}")

    def suspend(self, ae: str) -> requests.Response:
        return self._send("POST", f"/workitems/{GLOBAL}/subscribers/{ae}/suspend")


def tag_value(ds: dict, tag: str):  # noqa: ANN201
    vals = (ds.get(tag) or {}).get("Value") or [None]
    return vals[0]
