"""Proof of possession: a signature, with the key of the sidecar's current certificate, over a
purpose, the time and a payload. Shared by the sidecar (which signs) and the control plane (which
checks), so both build the same bytes::

    <purpose> "\\n" <unix_time, decimal> "\\n" <sha256(payload), hex>

Two purposes: ``RENEWAL`` (payload: the new CSR, so a captured proof can only get a certificate for
a key that never left its sidecar) and ``DISCOVERY`` (payload: the node id, proving the identity a
discovery stream registers). The time bounds how long a captured proof is worth anything at all
(``MAX_SKEW`` either way of the checker's clock).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from control_plane.api_errors import PermissionDenied, Unauthenticated
from control_plane.pki import SigningKey
from control_plane.spiffe import SpiffeId
from control_plane.svid import InvalidSvid, validate_svid

MAX_SKEW = timedelta(minutes=5)
RENEWAL = b"grpc-mesh-renewal-v1"
DISCOVERY = b"grpc-mesh-discovery-v1"


def proof_message(purpose: bytes, unix_time: int, payload: bytes) -> bytes:
    return purpose + b"\n" + str(unix_time).encode() + b"\n" + hashlib.sha256(payload).hexdigest().encode()


def sign_proof(key: SigningKey, purpose: bytes, unix_time: int, payload: bytes) -> bytes:
    message = proof_message(purpose, unix_time, payload)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message)


def signature_valid(public_key: CertificatePublicKeyTypes, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def check_proof(
    chain_pem: str,
    unix_time: int,
    signature: bytes,
    *,
    purpose: bytes,
    payload: bytes,
    roots: Sequence[x509.Certificate],
    trust_domain: str,
    now: datetime,
    what: str,
) -> tuple[SpiffeId, x509.Certificate]:
    """The proven identity and leaf. Unauthenticated (naming `what` and the reason) for an invalid
    chain, a stale time or a bad signature; PermissionDenied for another trust domain."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        raise Unauthenticated(f"{what}: certificate_chain holds no readable PEM certificate") from None
    try:
        identity = validate_svid(chain, roots, now)
    except InvalidSvid as exc:
        raise Unauthenticated(f"{what}: the certificate is not valid: {exc}") from None
    if identity.trust_domain != trust_domain:
        raise PermissionDenied(f"{what}: {identity} is not in this mesh's trust domain {trust_domain!r}")
    skew, limit = abs(now.timestamp() - unix_time), MAX_SKEW.total_seconds()
    if skew > limit:
        raise Unauthenticated(
            f"{what}: unix_time is {skew:.0f}s from the control plane's clock (at most {limit:.0f}s)"
        )
    if not signature_valid(chain[0].public_key(), signature, proof_message(purpose, unix_time, payload)):
        raise Unauthenticated(f"{what}: the signature does not verify with the certificate's key")
    return identity, chain[0]
