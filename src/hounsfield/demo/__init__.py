"""Demo data and the demo model.

* :func:`sample_dicom_roots`: the real sample DICOM that ships offline (pydicom's test files,
  pydicom-data), used by ``hounsfield demo`` (the README's first command) to fill an archive a
  new user can look at straight away.  Nothing is downloaded: the files come from installed
  packages.
* :func:`install_demo_model`: the small two-stage nodule model shipped in ``demo/model/``
  (synthetic training data only), registered with its evaluation reports
  (:mod:`hounsfield.demo.install`).
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from hounsfield.demo.install import DEMO_MODEL_DIR, DEMO_MODEL_NAME, install_demo_model

__all__ = ["DEMO_MODEL_DIR", "DEMO_MODEL_NAME", "install_demo_model", "sample_dicom_roots"]


def sample_dicom_roots() -> list[Path]:
    """Folders of real sample DICOM installed with pydicom and the pydicom-data package."""
    base = Path(pydicom.__file__).parent / "data"
    roots = [base / "test_files", base / "charset_files"]
    try:
        import data_store  # pydicom-data

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return [r for r in roots if r.is_dir()]
