"""Demo data: the real sample DICOM that ships offline (pydicom's test files, pydicom-data).

Used by ``hounsfield demo`` (the README's first command) to fill an archive a new user can look
at straight away.  Nothing is downloaded: the files come from installed packages.
"""

from __future__ import annotations

from pathlib import Path

import pydicom


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
