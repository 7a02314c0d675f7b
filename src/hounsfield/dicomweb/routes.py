"""The ``/dicom-web`` router: QIDO-RS, WADO-RS (+ WADO-URI) and STOW-RS together."""

from __future__ import annotations

from fastapi import APIRouter

from hounsfield.dicomweb import qido, stow, wado

router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])
router.include_router(qido.router)
router.include_router(wado.router)
router.include_router(stow.router)
