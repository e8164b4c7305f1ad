"""SPIFFE identities of mesh workloads: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``.

Parsing is strict. The SPIFFE ID rules (lower-case scheme and trust domain, no port,
user info, query, fragment or percent-encoding, no empty / dot path segments) are
enforced, and on top of them the mesh's own shape: exactly the four path segments
``ns/<namespace>/sa/<service>``. Every rejection says what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

SCHEME = "spiffe://"
MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255

_TRUST_DOMAIN_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` unchanged, or raise ValueError saying why it is not usable."""
    if not trust_domain:
        raise ValueError("trust domain is empty")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise ValueError(f"trust domain is longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    if ":" in trust_domain:
        raise ValueError(f"trust domain {trust_domain!r} must not contain a port or ':'")
    if _TRUST_DOMAIN_CHARS.fullmatch(trust_domain) is None:
        raise ValueError(
            f"trust domain {trust_domain!r} may only contain lower-case letters, digits, '.', '-' and '_'"
        )
    return trust_domain


def validate_segment(value: str, what: str) -> str:
    """Return ``value`` if it is a valid SPIFFE path segment, else raise ValueError naming ``what``."""
    if not value:
        raise ValueError(f"{what} is empty")
    if value in (".", ".."):
        raise ValueError(f"{what} must not be '.' or '..'")
    if _SEGMENT_CHARS.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} may only contain letters, digits, '.', '-' and '_'")
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A workload identity. Construction validates every part."""

    trust_domain: str
    namespace: str
    service: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_segment(self.namespace, "namespace")
        validate_segment(self.service, "service")

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    @property
    def uri(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://<td>/ns/<ns>/sa/<service>``; raise ValueError naming the problem."""
        if not isinstance(uri, str):
            raise ValueError(f"SPIFFE ID must be a string, got {type(uri).__name__}")
        if len(uri) > MAX_ID_LENGTH:
            raise ValueError(f"SPIFFE ID is longer than {MAX_ID_LENGTH} characters")
        if not uri.startswith(SCHEME):
            raise ValueError(f"SPIFFE ID {uri!r} must start with {SCHEME!r} (lower case)")
        for char, name in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
            if char in uri:
                raise ValueError(f"SPIFFE ID {uri!r} must not contain {name} ({char!r})")
        rest = uri[len(SCHEME) :]
        trust_domain, slash, path = rest.partition("/")
        if "@" in trust_domain:
            raise ValueError(f"SPIFFE ID {uri!r} must not contain user info ('@')")
        try:
            validate_trust_domain(trust_domain)
        except ValueError as exc:
            raise ValueError(f"SPIFFE ID {uri!r}: {exc}") from None
        if not slash or not path:
            raise ValueError(f"SPIFFE ID {uri!r} has no path; expected /ns/<namespace>/sa/<service>")
        segments = path.split("/")
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise ValueError(f"SPIFFE ID {uri!r} path must be exactly /ns/<namespace>/sa/<service>")
        try:
            return cls(trust_domain, segments[1], segments[3])
        except ValueError as exc:
            raise ValueError(f"SPIFFE ID {uri!r}: {exc}") from None


def uri_sans(cert: x509.Certificate) -> list[str]:
    """All URI subjectAltName entries of ``cert`` (empty if it has no SAN extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The workload identity of an X.509-SVID: its one and only URI SAN, parsed strictly."""
    uris = uri_sans(cert)
    if len(uris) != 1:
        raise ValueError(f"certificate must have exactly one URI SAN, found {len(uris)}")
    return SpiffeId.parse(uris[0])
