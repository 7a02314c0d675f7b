"""The audit trail: every access to patient data, modelled on DICOM PS3.15 Annex A.5 / IHE ATNA.

Record with :func:`record`; query with :func:`query`.  One row per audit message: who (user or
AE title, role), what (ATNA event + our action keyword), which study/patient, when, from where
(IP address or calling AE host), and the outcome (PS3.15 A.5.3 EventOutcomeIndicator).
"""

from hounsfield.audit.models import AuditEvent
from hounsfield.audit.trail import Action, Entry, Outcome, query, record, record_many

__all__ = ["Action", "AuditEvent", "Entry", "Outcome", "query", "record", "record_many"]
