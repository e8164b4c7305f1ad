"""TLS for the relay, in one module so a faster path can replace it: TLS 1.3, ALPN h2, mutual auth.

Verification is by the mesh CA only (no hostnames): who the peer is comes from the SPIFFE ID in
its certificate's URI SAN, which later filters (authorization) read.
"""

from __future__ import annotations

import ssl
from pathlib import Path

ALPN = ["h2"]


def _base(purpose: ssl.Purpose, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """For the inbound listener: a client certificate from the mesh CA is required."""
    return _base(ssl.Purpose.CLIENT_AUTH, cert, key, ca)


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """For calls to other sidecars: present our certificate, require theirs from the mesh CA."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, cert, key, ca)
    ctx.check_hostname = False  # identity is the SPIFFE ID, checked by the caller, not a DNS name
    return ctx


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The URI SAN of a verified peer certificate, if it has exactly one spiffe:// URI."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    uris = [entry[1] for entry in cert.get("subjectAltName", ()) if entry[0] == "URI"]
    spiffe = [u for u in uris if isinstance(u, str) and u.startswith("spiffe://")]
    return spiffe[0] if len(spiffe) == 1 else None


def negotiated_h2(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bool:
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
