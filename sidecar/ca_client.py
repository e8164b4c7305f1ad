"""The sidecar's side of the CA API: make a key, send its CSR, check what comes back.

The key is made here and never leaves the process. The first request carries the join token;
later ones prove the current certificate instead (control_plane.possession). A response is used
only if it is a valid X.509-SVID for our key under the trust bundle sent with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from mesh.v1 import ca_pb2, ca_pb2_grpc

from control_plane.pki import build_csr, certs_pem, generate_private_key
from control_plane.possession import RENEWAL, sign_proof
from control_plane.spiffe import SpiffeId
from control_plane.svid import InvalidSvid, validate_svid


class BadCertificate(ValueError):
    """The CA answered with something the sidecar will not use."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A workload certificate and its key, as the sidecar holds them."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]  # leaf → root, as the CA sent it
    roots: tuple[x509.Certificate, ...]  # the trust bundle sent with it
    spiffe_id: SpiffeId
    obtained: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def presented_pem(self) -> bytes:
        """What a TLS endpoint presents: the leaf and intermediates (not the root)."""
        return certs_pem(c for c in self.chain if c not in self.roots)

    @property
    def issuer(self) -> x509.Certificate | None:
        """The certificate that signed the leaf (the CA's signing certificate)."""
        return self.chain[1] if len(self.chain) > 1 else None


def _placeholder_identity(hint: SpiffeId | None) -> SpiffeId:
    # The CA ignores the CSR's names; this only makes the CSR readable to a person.
    return hint if hint is not None else SpiffeId("mesh.invalid", "unknown", "unknown")


async def fetch_certificate(
    stub: ca_pb2_grpc.CertificateServiceStub,
    *,
    now: datetime,
    token: str | None = None,
    current: Issued | None = None,
    hint: SpiffeId | None = None,
    timeout: float = 10.0,
) -> Issued:
    """One CSR round trip. Raises grpc.aio.AioRpcError for a refusal, BadCertificate for an
    unusable answer."""
    key = generate_private_key()
    csr = build_csr(key, _placeholder_identity(current.spiffe_id if current is not None else hint))
    request = ca_pb2.CreateCertificateRequest(csr=csr.decode())
    metadata: list[tuple[str, str]] = []
    if current is not None:
        unix_time = int(now.timestamp())
        request.renewal.certificate_chain = current.presented_pem.decode()
        request.renewal.unix_time = unix_time
        request.renewal.signature = sign_proof(current.key, RENEWAL, unix_time, csr)
    elif token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    response = await stub.CreateCertificate(request, metadata=metadata, timeout=timeout)
    return accept(key, response, now)


def accept(
    key: ec.EllipticCurvePrivateKey, response: ca_pb2.CreateCertificateResponse, now: datetime
) -> Issued:
    try:
        chain = tuple(x509.load_pem_x509_certificate(pem.encode()) for pem in response.cert_chain)
        roots = tuple(x509.load_pem_x509_certificate(pem.encode()) for pem in response.trust_bundle)
    except ValueError as exc:
        raise BadCertificate(f"the CA sent an unreadable certificate: {exc}") from None
    if not chain or not roots:
        raise BadCertificate("the CA sent no certificate chain or no trust bundle")
    try:
        identity = validate_svid(chain, roots, now)
    except InvalidSvid as exc:
        raise BadCertificate(f"the CA sent an invalid SVID: {exc}") from None
    if chain[0].public_key() != key.public_key():
        raise BadCertificate("the CA sent a certificate for another key")
    return Issued(key, chain, roots, identity, now)


__all__ = ["BadCertificate", "Issued", "accept", "fetch_certificate"]
