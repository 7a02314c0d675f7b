"""Imaging core: series -> volume, geometry, format conversion, harmonisation plans.

The API other stages use::

    from hounsfield.imaging import Volume, load_series, PreprocessingPlan
    vol = load_series(archive, series_uid)          # Volume: array [k, j, i], affine, provenance
    x = PreprocessingPlan.load("plan.json").apply(vol)
"""

from hounsfield.imaging.plan import PreprocessingPlan
from hounsfield.imaging.series import load_files, load_series, stacks_of, volume_from_datasets
from hounsfield.imaging.volume import Volume

__all__ = ["PreprocessingPlan", "Volume", "load_files", "load_series", "stacks_of",
           "volume_from_datasets"]
