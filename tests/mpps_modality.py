"""A modality's MPPS side for the tests: pynetdicom (not our code) as the Modality Performed
Procedure Step SCU, building N-CREATE / N-SET attribute lists the way PS3.4 Table F.7.2-1 asks."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, Verification

MPPS = ModalityPerformedProcedureStep


def create_attrs(study_uid: str, *, state: str = "IN PROGRESS", patient_id: str = "PIPE1",
                 patient_name: str = "PIPE^ONE", accession: str = "ACC1",
                 modality: str = "CT") -> Dataset:
    """An N-CREATE Attribute List (Type 1 and 2 attributes of Table F.7.2-1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    step = Dataset()
    step.StudyInstanceUID = study_uid
    step.ReferencedStudySequence = []
    step.AccessionNumber = accession
    step.RequestedProcedureID = "RP1"
    step.RequestedProcedureDescription = "CT chest"
    step.ScheduledProcedureStepID = "SPS1"
    step.ScheduledProcedureStepDescription = "CT chest low dose"
    step.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "MODALITY"
    ds.PerformedStationName = "CT-1"
    ds.PerformedLocation = "Radiology"
    ds.PerformedProcedureStepStartDate = "20261202"
    ds.PerformedProcedureStepStartTime = "040000"
    ds.PerformedProcedureStepStatus = state
    ds.PerformedProcedureStepDescription = "CT chest"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = modality
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def performed_series(files: list[Path], extra_uids: tuple[str, ...] = ()) -> list[Dataset]:
    """Performed Series Sequence items for the files (grouped by series), plus SOP Instance
    UIDs that never get sent (``extra_uids``, put in the first series)."""
    by_series: dict[str, list[tuple[str, str]]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(
            (str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    items = []
    for n, (series, refs) in enumerate(by_series.items()):
        if n == 0:
            refs = refs + [("1.2.840.10008.5.1.4.1.1.2", u) for u in extra_uids]
        item = Dataset()
        item.PerformingPhysicianName = ""
        item.ProtocolName = "chest"
        item.OperatorsName = ""
        item.SeriesInstanceUID = series
        item.SeriesDescription = "chest"
        item.RetrieveAETitle = ""
        images = []
        for cls, sop in refs:
            r = Dataset()
            r.ReferencedSOPClassUID = cls
            r.ReferencedSOPInstanceUID = sop
            images.append(r)
        item.ReferencedImageSequence = images
        item.ReferencedNonImageCompositeSOPInstanceSequence = []
        items.append(item)
    return items


def final_mods(state: str, series: list[Dataset] | None = None) -> Dataset:
    """An N-SET Modification List ending the step (COMPLETED / DISCONTINUED)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = state
    ds.PerformedProcedureStepEndDate = "20261202"
    ds.PerformedProcedureStepEndTime = "041500"
    ds.PerformedSeriesSequence = series or []
    if state == "DISCONTINUED":
        reason = Dataset()
        reason.CodeValue = "110514"
        reason.CodingSchemeDesignator = "DCM"
        reason.CodeMeaning = "Incorrect worklist entry selected"
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
    return ds


class Modality:
    """One association to the node proposing MPPS (and Verification, and optionally storage
    contexts); ``create`` / ``set`` return (status, error comment, error id)."""

    def __init__(self, port: int, *, ae_title: str = "MODALITY", storage: list[str] = ()) -> None:
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(MPPS)
        ae.add_requested_context(Verification)
        for sop in storage:
            ae.add_requested_context(sop)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="HOUNSFIELD")
        assert self.assoc.is_established, "the node refused the MPPS association"

    @staticmethod
    def _out(status: Dataset | None) -> tuple[int, str, int | None]:
        assert status is not None, "no response (association aborted?)"
        return (int(status.Status), str(status.get("ErrorComment", "")),
                status.get("ErrorID"))

    def create(self, attrs: Dataset, uid: str | None = "") -> tuple[int, str, int | None]:
        status, _ = self.assoc.send_n_create(attrs, MPPS,
                                             generate_uid() if uid == "" else uid)
        return self._out(status)

    def set(self, uid: str, mods: Dataset) -> tuple[int, str, int | None]:
        status, _ = self.assoc.send_n_set(mods, MPPS, uid)
        return self._out(status)

    def echo(self) -> int:
        return int(self.assoc.send_c_echo().Status)

    def store(self, ds: Dataset) -> int:
        return int(self.assoc.send_c_store(ds).Status)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def __enter__(self) -> Modality:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
