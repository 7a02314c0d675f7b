"""Benchmarks: each runs our code and a named peer on the same data in the same run."""

import os
import shutil

# pynetdicom installs Python look-alikes of dcmtk's tools (storescu, storescp, ...) into the
# venv's bin/; the peers we compare against are dcmtk's.
if shutil.which("storescu", path="/usr/bin"):
    os.environ["PATH"] = "/usr/bin" + os.pathsep + os.environ.get("PATH", "")
