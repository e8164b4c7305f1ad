"""Proof of possession for renewals: the sidecar signs, with its current certificate's key, a
message naming the time and the new CSR. Shared by the sidecar (which signs) and the CA (which
checks), so both build the same bytes.

The proof is bound to the CSR: replaying it can only get a certificate for the CSR's public key,
whose private half never left the sidecar that made it. The time bounds how long a captured
proof is worth anything at all (``MAX_SKEW`` either way).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from control_plane.pki import SigningKey

MAX_SKEW = timedelta(minutes=5)
_PREFIX = b"grpc-mesh-renewal-v1\n"


def renewal_message(unix_time: int, csr_pem: bytes) -> bytes:
    return _PREFIX + str(unix_time).encode() + b"\n" + hashlib.sha256(csr_pem).hexdigest().encode()


def sign_renewal(key: SigningKey, unix_time: int, csr_pem: bytes) -> bytes:
    message = renewal_message(unix_time, csr_pem)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message)


def renewal_signature_valid(
    public_key: CertificatePublicKeyTypes, signature: bytes, unix_time: int, csr_pem: bytes
) -> bool:
    message = renewal_message(unix_time, csr_pem)
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
