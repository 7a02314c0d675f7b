"""De-identification: the PS3.15 Annex E profile as data, the engine, the verifier, the vault."""

from hounsfield.deid.engine import Deidentifier, DeidResult, to_part10
from hounsfield.deid.profile import EDITION, DeidOptions
from hounsfield.deid.verify import Leak, verify

__all__ = ["EDITION", "DeidOptions", "DeidResult", "Deidentifier", "Leak", "to_part10", "verify"]
