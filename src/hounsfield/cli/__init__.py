"""The ``hounsfield`` command line (Typer + Rich)."""
