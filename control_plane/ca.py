"""The mesh certificate authority: an ECDSA P-256 CA that signs SPIFFE X.509-SVIDs from CSRs.

The CA is either a self-signed root made by :meth:`CertificateAuthority.create`, or an
intermediate signed by an outside root and loaded from disk. On disk (``save``/``load``):

``ca.pem``      the signing certificate, then any further intermediates (a root, if present, is moved
                to the trust bundle)
``ca-key.pem``  the signing key, PKCS#8 PEM, mode 0600
``root.pem``    the root certificate(s) verifiers trust; absent when ``ca.pem`` is itself the root

Nothing here reads the clock except :func:`issue_workload_files` when no ``now`` is given.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.pki import (
    CAError,
    InvalidCSR,
    SigningKey,
    build_csr,
    cert_pem,
    certs_pem,
    csr_public_key,
    generate_private_key,
    is_ca,
    is_self_signed,
    key_usage,
    private_key_pem,
    read_certs,
    signature_hash,
    signed_by,
    subject_key_identifier,
    write_atomic,
)
from control_plane.spiffe import SCHEME, SpiffeId, validate_trust_domain

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLOCK_SKEW",
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_LEAF_TTL",
    "ROOT_CERT_FILE",
    "CAError",
    "CertificateAuthority",
    "InvalidCSR",
    "IssuedCertificate",
    "SpiffeId",
    "WorkloadFiles",
    "build_csr",
    "generate_private_key",
    "issue_workload_files",
    "private_key_pem",
]

DEFAULT_CA_VALIDITY = timedelta(days=3650)
DEFAULT_LEAF_TTL = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=1)  # notBefore is backdated by this much
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
ROOT_CERT_FILE = "root.pem"


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate: x509.Certificate
    cert_pem: bytes  # the leaf alone
    chain_pem: bytes  # intermediates that follow the leaf (empty when the CA is the root)

    @property
    def full_chain_pem(self) -> bytes:
        """Leaf first, then the chain: what a TLS endpoint presents."""
        return self.cert_pem + self.chain_pem


@dataclass(frozen=True, slots=True)
class WorkloadFiles:
    cert: Path  # <service>.pem: leaf + chain
    key: Path  # <service>-key.pem, mode 0600
    ca: Path  # ca.pem: the trust bundle


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


class CertificateAuthority:
    """Signs workload certificates. Construct with :meth:`create` or :meth:`load`.

    ``chain`` lists the certificates above ``certificate`` (each signed by the next); ``roots``
    are the trust anchors. With no roots the top of the chain must be self-signed and becomes
    the root.
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        key: SigningKey,
        *,
        chain: Sequence[x509.Certificate] = (),
        roots: Sequence[x509.Certificate] = (),
    ) -> None:
        if certificate.public_key() != key.public_key():
            raise CAError("the CA private key does not match the CA certificate")
        if not is_ca(certificate):
            raise CAError("the CA certificate is not a CA (basicConstraints CA:true is missing)")
        path = [certificate, *chain]
        for child, parent in itertools.pairwise(path):
            if not signed_by(child, parent):
                name = child.subject.rfc4514_string()
                raise CAError(f"the CA chain is broken: {name!r} is not signed by the certificate after it")
        if not roots:
            if not is_self_signed(path[-1]):
                raise CAError(
                    "the CA certificate is an intermediate but no root was given; "
                    f"put the root certificate(s) in {ROOT_CERT_FILE}"
                )
            roots = [path[-1]]
        elif not any(path[-1] == root or signed_by(path[-1], root) for root in roots):
            raise CAError("the CA certificate does not chain to any of the given root certificates")
        self._cert = certificate
        self._key = key
        self._chain = [c for c in path[1:] if c not in roots]
        self._roots = list(roots)
        self._ski = subject_key_identifier(certificate)

    @classmethod
    def create(
        cls, trust_domain: str, *, now: datetime, validity: timedelta = DEFAULT_CA_VALIDITY
    ) -> CertificateAuthority:
        """A new self-signed ECDSA P-256 root for ``trust_domain``, valid from ``now`` for ``validity``."""
        validate_trust_domain(trust_domain)
        now = _utc(now)
        if validity <= timedelta(0):
            raise ValueError("CA validity must be positive")
        key = generate_private_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, "grpc-mesh root CA"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: str | Path) -> CertificateAuthority:
        """Load ``ca.pem``, ``ca-key.pem`` and the optional ``root.pem`` from ``directory``."""
        directory = Path(directory)
        certs = read_certs(directory / CA_CERT_FILE, error=CAError)
        key_path = directory / CA_KEY_FILE
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except FileNotFoundError:
            raise CAError(f"{key_path} does not exist") from None
        except OSError as exc:
            raise CAError(f"cannot read {key_path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError) as exc:
            raise CAError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, SigningKey):
            raise CAError(f"{key_path}: unsupported key type {type(key).__name__}; use ECDSA, RSA or Ed25519")
        root_path = directory / ROOT_CERT_FILE
        roots = read_certs(root_path, error=CAError) if root_path.exists() else []
        try:
            return cls(certs[0], key, chain=certs[1:], roots=roots)
        except CAError as exc:
            raise CAError(f"{directory}: {exc}") from None

    def save(self, directory: str | Path) -> None:
        """Write the CA to ``directory`` (created if needed); each file is replaced atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / CA_KEY_FILE, private_key_pem(self._key), mode=0o600)
        write_atomic(directory / CA_CERT_FILE, cert_pem(self._cert) + certs_pem(self._chain), mode=0o644)
        if self._roots == [self._cert]:
            (directory / ROOT_CERT_FILE).unlink(missing_ok=True)  # a stale one would shadow this root
        else:
            write_atomic(directory / ROOT_CERT_FILE, self.trust_bundle(), mode=0o644)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def roots(self) -> list[x509.Certificate]:
        return list(self._roots)

    @property
    def trust_domain(self) -> str | None:
        """The trust domain in the CA certificate's ``spiffe://<td>`` URI SAN, if it has one."""
        try:
            san = self._cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(SCHEME) and "/" not in uri[len(SCHEME) :]:
                return uri[len(SCHEME) :]
        return None

    def trust_bundle(self) -> bytes:
        """PEM of the root certificate(s) that verifiers trust."""
        return certs_pem(self._roots)

    def chain_pem(self) -> bytes:
        """PEM of what follows a leaf: the signing cert and intermediates; empty for a root CA."""
        if self._cert in self._roots:
            return b""
        return certs_pem([self._cert, *self._chain])

    def sign_csr(
        self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta, now: datetime
    ) -> IssuedCertificate:
        """Sign a leaf for ``identity`` with the CSR's public key; the CSR's names are ignored.

        The leaf is valid from ``now - CLOCK_SKEW`` to ``now + ttl`` (cut at the CA's own expiry).
        Raises :class:`InvalidCSR` for an unparsable or badly signed CSR, and :class:`CAError` when
        the CA cannot sign (not valid at ``now``, another trust domain).
        """
        now = _utc(now)
        if ttl <= timedelta(0):
            raise ValueError("certificate ttl must be positive")
        public_key = csr_public_key(csr_pem)
        td = self.trust_domain
        if td is not None and identity.trust_domain != td:
            raise CAError(f"this CA signs for trust domain {td!r}, not {identity.trust_domain!r}")
        ca_start, ca_end = self._cert.not_valid_before_utc, self._cert.not_valid_after_utc
        if now >= ca_end:
            raise CAError(f"the CA certificate expired at {ca_end.isoformat()}")
        if now < ca_start:
            raise CAError(f"the CA certificate is not valid before {ca_start.isoformat()}")
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - CLOCK_SKEW, ca_start))
            .not_valid_after(min(now + ttl, ca_end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            # The subject is empty, so RFC 5280 wants the SAN marked critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._key, signature_hash(self._key))
        )
        return IssuedCertificate(certificate=leaf, cert_pem=cert_pem(leaf), chain_pem=self.chain_pem())


def issue_workload_files(
    ca: CertificateAuthority,
    identity: SpiffeId,
    out_dir: str | Path,
    *,
    ttl: timedelta = DEFAULT_LEAF_TTL,
    now: datetime | None = None,
) -> WorkloadFiles:
    """Make a key and CSR locally, sign it, write ``<service>.pem``, ``<service>-key.pem``, ``ca.pem``.

    ``now`` defaults to the current time (a convenience for the CLI and the demo). An existing
    ``ca.pem`` is kept when it holds the CA's roots; if it holds anything else (another CA, or
    ``out_dir`` is the home of an intermediate CA) CAError says so, rather than leaving a
    workload with certificates its peers cannot verify.
    """
    when = datetime.now(UTC) if now is None else now
    out = Path(out_dir)
    bundle = out / CA_CERT_FILE
    if bundle.exists() and any(root not in read_certs(bundle, error=CAError) for root in ca.roots):
        raise CAError(
            f"{bundle} exists but does not hold this CA's root certificate; "
            "remove it or choose another output directory"
        )
    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, identity), identity, ttl, when)
    out.mkdir(parents=True, exist_ok=True)
    files = WorkloadFiles(
        cert=out / f"{identity.service}.pem", key=out / f"{identity.service}-key.pem", ca=bundle
    )
    write_atomic(files.key, private_key_pem(key), mode=0o600)
    write_atomic(files.cert, issued.full_chain_pem, mode=0o644)
    if not bundle.exists():
        write_atomic(bundle, ca.trust_bundle(), mode=0o644)
    return files
