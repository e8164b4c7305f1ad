"""TLS for the relay, in one module so a faster path can replace it: TLS 1.3, ALPN h2, mutual auth.

Verification is by the mesh CA only (no hostnames): who the peer is comes from the SPIFFE ID in
its certificate's URI SAN, which later filters (authorization) read.

Contexts come from files (static mode, `meshctl certs issue`) or from memory (a certificate the
control plane's CA issued: the key is loaded through an anonymous memory file, never written to
disk). A listener's context can be swapped while it runs (`SwappableServerContext`): new
handshakes use the new certificate and trust bundle, connections already open are untouched.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

ALPN = ["h2"]


def _base(
    purpose: ssl.Purpose, cert: Path, key: Path | None, ca: Path | None = None, cadata: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=None if ca is None else str(ca), cadata=cadata)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    ctx.load_cert_chain(str(cert), None if key is None else str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[Path]:
    """A path to `data` that lives in memory only (memfd); a private temp file where there is none."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("grpc-mesh-svid", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="grpc-mesh-svid-") as tmp:  # mode 0700
        path = Path(tmp, "svid.pem")
        path.write_bytes(data)
        yield path


def contexts_from_pem(
    chain_pem: bytes, key_pem: bytes, roots_pem: str
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts presenting `chain_pem` (leaf first) with `key_pem`, trusting the
    PEM roots in `roots_pem` only."""
    with _memory_file(chain_pem + key_pem) as path:
        server = _base(ssl.Purpose.CLIENT_AUTH, path, None, cadata=roots_pem)
        client = _base(ssl.Purpose.SERVER_AUTH, path, None, cadata=roots_pem)
    client.check_hostname = False
    return server, client


class SwappableServerContext:
    """The context a listener is created with, whose certificate and trust can be replaced later:
    each handshake switches to the context in force (OpenSSL's servername callback runs for every
    ClientHello, with or without SNI), so `swap` affects new connections only."""

    def __init__(self, initial: ssl.SSLContext) -> None:
        self.current = initial
        self.front = initial
        initial.sni_callback = self._select

    def _select(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self.current is not self.front:
            ssl_object.context = self.current

    def swap(self, new: ssl.SSLContext) -> None:
        self.current = new


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
