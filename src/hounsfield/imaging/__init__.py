"""Imaging core: series -> volume, geometry, format conversion, harmonisation plans."""

from hounsfield.imaging.series import load_files, load_series, stacks_of, volume_from_datasets
from hounsfield.imaging.volume import Volume

__all__ = ["Volume", "load_files", "load_series", "stacks_of", "volume_from_datasets"]
