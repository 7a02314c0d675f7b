"""Hounsfield: an open medical-imaging AI platform (archive, AI platform, clinical layer)."""

__version__ = "0.1.0"
