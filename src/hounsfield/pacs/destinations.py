"""DICOM destinations: a name from ``settings.dicom.remotes`` or ``AE@host:port``."""

from __future__ import annotations

import re

from hounsfield.config import DimseDestination, RemoteNode, Settings
from hounsfield.errors import ConfigurationError, InvalidInput

_ADDR = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def resolve(settings: Settings, dest: str) -> RemoteNode:
    """The remote node ``dest`` names; :class:`InvalidInput` with the known names otherwise."""
    if dest in settings.dicom.remotes:
        return settings.dicom.remotes[dest]
    m = _ADDR.match(dest.strip())
    if m:
        port = int(m["port"])
        if not 1 <= port <= 65535:
            raise InvalidInput(f"port out of range in {dest!r}")
        ae = m["ae"].strip()
        if not ae or any(c in ae for c in "\\") or not ae.isprintable():
            raise InvalidInput(f"invalid AE title in {dest!r}")
        return RemoteNode(ae_title=ae, host=m["host"].strip("[]"), port=port)
    known = ", ".join(sorted(settings.dicom.remotes)) or "none configured"
    raise InvalidInput(f"unknown destination {dest!r}: use AE@host:port or a configured "
                       f"remote ({known})")


def label(node: RemoteNode) -> str:
    return f"{node.ae_title}@{node.host}:{node.port}"


def node_of(settings: Settings, dest: DimseDestination) -> RemoteNode:
    """The DICOM node a DIMSE export destination sends to (its ``remote`` or its own address)."""
    if dest.remote is not None:
        if dest.remote not in settings.dicom.remotes:
            raise ConfigurationError(f"export destination names remote {dest.remote!r}, which "
                                     "is not in dicom.remotes")
        return settings.dicom.remotes[dest.remote]
    assert dest.ae_title and dest.host and dest.port  # checked by the settings
    return RemoteNode(ae_title=dest.ae_title, host=dest.host, port=dest.port, tls=dest.tls)
