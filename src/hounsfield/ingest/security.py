"""Association security (PS3.15 Annex B TLS profile, PS3.8 A-ASSOCIATE checks).

Calling-AE allow-list with a host check (allow-all only in the demo profile), called-AE check,
optional TLS with client certificates, and TCP_NODELAY on every socket we touch.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl

from hounsfield.config import Settings
from hounsfield.errors import ConfigurationError

log = logging.getLogger(__name__)


def admit(settings: Settings, calling_ae: str, called_ae: str, peer_host: str) -> tuple[bool, str]:
    """``(ok, reason)``: may ``calling_ae`` at ``peer_host`` associate with us?"""
    d = settings.dicom
    calling = calling_ae.strip()
    if called_ae.strip() != d.ae_title:
        return False, f"called AE title {called_ae.strip()!r} is not ours ({d.ae_title!r})"
    if not d.allowed_peers:
        if settings.profile == "demo":
            return True, "demo profile: any calling AE admitted"
        return False, ("no calling AE titles are allowed (settings.dicom.allowed_peers is empty "
                       "outside the demo profile)")
    allowed = d.allowed_peers.get(calling)
    if allowed is None:
        return False, f"calling AE title {calling!r} is not in the allow-list"
    if allowed != "*" and not _same_host(allowed, peer_host):
        return False, f"calling AE title {calling!r} is allowed only from {allowed}, not {peer_host}"
    return True, "allow-listed"


def _same_host(allowed: str, peer: str) -> bool:
    if allowed == peer:
        return True
    try:
        net = ipaddress.ip_network(allowed, strict=False)
        return ipaddress.ip_address(peer) in net
    except ValueError:
        pass
    try:
        return peer in {ai[4][0] for ai in socket.getaddrinfo(allowed, None)}
    except OSError:
        return False


def nodelay(sock: socket.socket | None) -> None:
    """Disable Nagle: DIMSE is request/response; Nagle + delayed ACK costs ~40 ms per message."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # a socket already closed by the peer
        log.debug("TCP_NODELAY not set: %s", exc)


def server_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the SCP when ``tls_cert``/``tls_key`` are set; client certificates are required
    (and verified against ``tls_ca``) when ``tls_ca`` is set."""
    d = settings.dicom
    if not (d.tls_cert or d.tls_key):
        return None
    if not (d.tls_cert and d.tls_key):
        raise ConfigurationError("DICOM TLS needs both dicom.tls_cert and dicom.tls_key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(d.tls_cert, d.tls_key)
        if d.tls_ca:
            ctx.load_verify_locations(cafile=str(d.tls_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load DICOM TLS certificates: {exc}") from exc
    return ctx


def client_tls(settings: Settings, server_hostname: str) -> tuple[ssl.SSLContext, str]:
    """TLS for the SCU towards a remote with ``tls = true`` (our certificate as client cert)."""
    d = settings.dicom
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(d.tls_ca) if d.tls_ca else None)
    ctx.check_hostname = False  # DICOM peers are identified by certificate chain, not DNS name
    if d.tls_cert and d.tls_key:
        ctx.load_cert_chain(d.tls_cert, d.tls_key)
    return ctx, server_hostname
