"""Low-level X.509 helpers for the CA and its callers: keys, CSRs, PEM files, chain checks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from control_plane.spiffe import SpiffeId

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
SignatureHash = hashes.SHA256 | hashes.SHA384 | None


class CAError(Exception):
    """The CA cannot do what was asked (bad CA material, expired CA, wrong trust domain, ...)."""


class InvalidCSR(CAError):
    """A certificate signing request was unparsable, badly signed or carries an unusable key."""


# -- keys and CSRs ----------------------------------------------------------------------------


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: SigningKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def build_csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> bytes:
    """A PEM CSR for ``identity`` signed by ``key`` (the CA decides the final names anyway)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_public_key(csr_pem: bytes) -> CertificatePublicKeyTypes:
    """The public key of a CSR whose signature verifies; anything else raises :class:`InvalidCSR`."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise InvalidCSR(f"CSR is not a parsable PEM certificate request: {exc}") from None
    try:
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise InvalidCSR(f"CSR cannot be checked: {exc}") from None
    if not valid:
        raise InvalidCSR("CSR signature does not verify with the public key it carries")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise InvalidCSR(f"CSR key uses curve {public_key.curve.name}; use P-256 or P-384")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise InvalidCSR(f"CSR RSA key is {public_key.key_size} bits; at least 2048 are required")
    elif not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise InvalidCSR(f"CSR key type {type(public_key).__name__} is not supported")
    return public_key


# -- certificate details ----------------------------------------------------------------------


def key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def signature_hash(key: SigningKey) -> SignatureHash:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """True when ``parent``'s subject is ``child``'s issuer and its key verifies ``child``."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    """True when the certificate says it is a CA (basicConstraints CA:true)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def is_self_signed(cert: x509.Certificate) -> bool:
    return signed_by(cert, cert)


def subject_key_identifier(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


# -- PEM files ----------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert_pem(c) for c in certs)


def read_certs(path: Path, *, error: type[Exception] = ValueError) -> list[x509.Certificate]:
    """Every certificate in the PEM file at ``path``; ``error`` is raised, naming the path, on failure."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise error(f"{path} holds no readable PEM certificate: {exc}") from None


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data``: write a temp file (created with ``mode``) beside it, then rename.

    Readers see the old or the new content, never a partial file, and a private key is never
    readable by others, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
