"""The source series as the result builders need it: one data set per volume slice."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydicom.dataset import Dataset

from hounsfield.errors import InvalidInput
from hounsfield.imaging.volume import Volume


@dataclass
class SourceSeries:
    """``slices[k]`` is the data set of volume slice ``k`` (single-frame images)."""

    volume: Volume
    slices: list[Dataset]

    @classmethod
    def of(cls, datasets: list[Dataset], volume: Volume) -> SourceSeries:
        """Match the series' data sets to the volume's slices by SOP Instance UID. Raises
        :class:`InvalidInput` when a slice has no data set, the volume came from multi-frame
        images, or the data sets carry no pixel data or span several studies."""
        if not volume.sop_instance_uids or len(volume.sop_instance_uids) != volume.shape[0]:
            raise InvalidInput("the volume does not name the SOP instance of each slice")
        if any(f not in (0, None) for f in volume.frame_numbers):
            raise InvalidInput("results on multi-frame source images are not supported yet "
                               "(the volume's slices are frames)")
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        missing = [u for u in volume.sop_instance_uids if u not in by_uid]
        if missing:
            raise InvalidInput(f"{len(missing)} slice(s) of the volume have no data set, e.g. "
                               f"{missing[0]}")
        slices = [by_uid[u] for u in volume.sop_instance_uids]
        studies = {str(ds.get("StudyInstanceUID", "")) for ds in slices}
        if len(studies) != 1 or "" in studies:
            raise InvalidInput(f"the source images must be of one study, got {sorted(studies)}")
        if "PixelData" not in slices[0]:
            raise InvalidInput("the source data sets carry no pixel data")
        if "FrameOfReferenceUID" not in slices[0]:
            raise InvalidInput("the source images have no Frame of Reference UID")
        return cls(volume, slices)

    @property
    def first(self) -> Dataset:
        return self.slices[0]


def stamp_time(ds: Dataset, when: dt.datetime) -> None:
    """Content, instance creation and series date/time of a result: the time of the job, not
    of the call, so a re-run with the same job time writes the same bytes."""
    d, t = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    for prefix in ("Content", "InstanceCreation", "Series"):
        setattr(ds, f"{prefix}Date", d)
        setattr(ds, f"{prefix}Time", t)
    if "TimeOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = d, t
    for item in ds.get("ContributingEquipmentSequence", []):  # highdicom stamps its own clock
        item.ContributionDateTime = d + t
