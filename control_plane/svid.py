"""The X.509-SVID rules, checked: what the CA issues and what it accepts as proof for a renewal.

A workload certificate is valid when it is an SVID (exactly one URI SAN, a mesh SPIFFE ID parsed
strictly; CA:false; critical KeyUsage with digitalSignature and without keyCertSign/cRLSign; EKU
serverAuth and clientAuth), it is within its validity at ``now``, and its chain (leaf, then the
intermediates) leads to one of the trusted roots, each certificate signed by the next and each
issuer a CA valid at ``now``. :func:`validate_svid` returns the SPIFFE ID or raises
:class:`InvalidSvid` saying which rule failed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from control_plane.pki import is_ca, signed_by
from control_plane.spiffe import SpiffeId, uri_sans

__all__ = ["InvalidSvid", "validate_svid"]


class InvalidSvid(ValueError):
    """A certificate that is not a valid X.509-SVID of this mesh; the message says why."""


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        raise InvalidSvid(f"the certificate has no {kind.__name__} extension") from None


def _check_time(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now >= cert.not_valid_after_utc:
        raise InvalidSvid(f"{what} expired at {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        raise InvalidSvid(f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}")


def check_leaf(leaf: x509.Certificate) -> SpiffeId:
    """The SVID rules on the leaf alone (no time, no chain); returns its SPIFFE ID."""
    uris = uri_sans(leaf)
    if len(uris) != 1:
        raise InvalidSvid(f"an SVID has exactly one URI SAN, this one has {len(uris)}")
    try:
        identity = SpiffeId.parse(uris[0])
    except ValueError as exc:
        raise InvalidSvid(str(exc)) from None
    constraints = _extension(leaf, x509.BasicConstraints).value
    assert isinstance(constraints, x509.BasicConstraints)
    if constraints.ca:
        raise InvalidSvid("the certificate is a CA (basicConstraints CA:true); an SVID leaf must not be")
    usage_ext = _extension(leaf, x509.KeyUsage)
    if not usage_ext.critical:
        raise InvalidSvid("keyUsage must be critical")
    usage = usage_ext.value
    assert isinstance(usage, x509.KeyUsage)
    if not usage.digital_signature:
        raise InvalidSvid("keyUsage lacks digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        raise InvalidSvid("keyUsage has keyCertSign or cRLSign; a leaf SVID must not sign certificates")
    eku = _extension(leaf, x509.ExtendedKeyUsage).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    for oid, name in (
        (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
        (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
    ):
        if oid not in eku:
            raise InvalidSvid(f"extendedKeyUsage lacks {name}")
    return identity


def validate_svid(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
    *,
    trust_domain: str | None = None,
) -> SpiffeId:
    """Check ``chain`` (leaf first, then intermediates; a trailing root is allowed) against
    ``roots`` at ``now``; return the leaf's SPIFFE ID, or raise InvalidSvid naming the rule."""
    if not chain:
        raise InvalidSvid("no certificate")
    leaf = chain[0]
    identity = check_leaf(leaf)
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise InvalidSvid(f"trust domain {identity.trust_domain!r} is not this mesh's ({trust_domain!r})")
    _check_time(leaf, now, "the certificate")
    path = [c for c in chain if c not in roots] or [leaf]
    for child, parent in itertools.pairwise(path):
        if not is_ca(parent):
            raise InvalidSvid(f"{parent.subject.rfc4514_string()!r} in the chain is not a CA")
        if not signed_by(child, parent):
            raise InvalidSvid("the chain is broken: a certificate is not signed by the one after it")
        _check_time(parent, now, f"intermediate {parent.subject.rfc4514_string()!r}")
    top = path[-1]
    for root in roots:
        if signed_by(top, root) and is_ca(root):
            _check_time(root, now, f"root {root.subject.rfc4514_string()!r}")
            return identity
    raise InvalidSvid("the certificate does not chain to a trusted root")
