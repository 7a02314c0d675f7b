"""The coded concepts of the nodule results, in one place (PS3.16; checked against pydicom's
code dictionary, which is generated from PS3.16)."""

from __future__ import annotations

from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

CATEGORY = codes.SCT.MorphologicallyAbnormalStructure   # (49755003, SCT) CID 7150
FINDING = codes.SCT.Nodule                              # (27925004, SCT) CID 7151 / 6102
SITE = codes.SCT.Lung                                   # (39607008, SCT) Finding Site
PROCEDURE = Code("24627-2", "LN", "CT Chest")            # Procedure Reported (CID 100)
AREA = codes.SCT.Area                                   # (42798000, SCT)
LONG_AXIS = codes.SCT.LongAxis                          # (103339001, SCT)
VOLUME = codes.SCT.Volume                               # (118565006, SCT)
# the model's confidence: "The likelihood that the finding detected is in fact the type of
# finding identified" (CID 6048) — a ratio 0..1
CERTAINTY = codes.DCM.CertaintyOfFinding                # (111012, DCM)
CENTER = codes.DCM.Center                               # (111010, DCM) the detection point
SUMMARY = codes.DCM.CADProcessingAndFindingsSummary     # (111017, DCM) CID 6047
WITH_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithFindings        # (111242, DCM)
WITHOUT_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings  # (111241, DCM)
AI_FAMILY = codes.cid7162.ArtificialIntelligence        # (123110, DCM) Algorithm Family
MM = codes.UCUM.Millimeter
MM3 = codes.UCUM.CubicMillimeter
RATIO = codes.UCUM.Ratio                                # ({ratio}, UCUM)
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
COMMENT = codes.DCM.Comment                             # (121106, DCM)
MM2 = codes.UCUM.SquareMillimeter
