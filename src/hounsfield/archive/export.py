"""Export a study / series / instance as Part 10 files into a folder or a zip archive.

Files are laid out ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` — the exact
bytes stored, nothing re-encoded.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from hounsfield.archive.archive import Archive
from hounsfield.archive.query import instances_of
from hounsfield.errors import NotFound


def export(archive: Archive, uid: str, dest: Path, *,
           on_item: Callable[[str], None] | None = None) -> int:
    """Write every instance under ``uid`` to ``dest`` (a folder, or a ``.zip`` file)."""
    with archive.session() as s:
        rows = [(i.series.study.study_instance_uid, i.series.series_instance_uid,
                 i.sop_instance_uid, i.blob_key) for i in instances_of(s, uid)]
    if not rows:
        raise NotFound(f"no study, series or instance with UID {uid}")
    dest = Path(dest)
    if dest.suffix.lower() == ".zip":
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
            for st, se, sop, key in rows:
                zf.writestr(f"{st}/{se}/{sop}.dcm", archive.blobs.read(key))
                if on_item:
                    on_item(sop)
        return len(rows)
    for st, se, sop, key in rows:
        folder = dest / st / se
        folder.mkdir(parents=True, exist_ok=True)
        with archive.blobs.open(key) as src, open(folder / f"{sop}.dcm", "wb") as dst:
            shutil.copyfileobj(src, dst)
        if on_item:
            on_item(sop)
    return len(rows)
