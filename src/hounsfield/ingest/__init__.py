"""Ingest: the file importer, (later) the DIMSE SCP handlers and study-stable detection."""
