"""The X.509-SVID validator: an issued SVID passes every rule; each broken rule is refused, by name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.ca import DEFAULT_LEAF_TTL, CertificateAuthority, SpiffeId, build_csr, generate_private_key
from control_plane.pki import key_usage
from control_plane.svid import InvalidSvid, validate_svid

NOW = datetime(2030, 3, 4, 5, 6, 7, tzinfo=UTC)
USERS = SpiffeId("cluster.local", "default", "users")


@dataclass
class Root:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_root(name: str = "test root") -> Root:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Root(cert, key)


ROOT = make_root()
OTHER_ROOT = make_root("another root")


def leaf(
    root: Root = ROOT,
    *,
    uris: tuple[str, ...] = (str(USERS),),
    ca: bool = False,
    usage: dict[str, Any] | None = None,
    usage_critical: bool = True,
    eku: tuple[x509.ObjectIdentifier, ...] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    not_before: datetime = NOW - timedelta(minutes=1),
    not_after: datetime = NOW + timedelta(hours=24),
) -> x509.Certificate:
    """A leaf signed by `root` that follows every rule unless told otherwise."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            key_usage(**({"digital_signature": True} if usage is None else usage)), critical=usage_critical
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=True
        )
    return builder.sign(root.key, hashes.SHA256())


def refused(
    chain: list[x509.Certificate], reason: str, *, roots: list[x509.Certificate] | None = None
) -> None:
    with pytest.raises(InvalidSvid, match=reason):
        validate_svid(chain, roots if roots is not None else [ROOT.cert], NOW)


def test_a_good_leaf_passes() -> None:
    assert validate_svid([leaf()], [ROOT.cert], NOW) == USERS


def test_an_svid_issued_by_the_mesh_ca_passes_every_rule() -> None:
    ca = CertificateAuthority.create("cluster.local", now=NOW)
    issued = ca.sign_csr(build_csr(generate_private_key(), USERS), USERS, DEFAULT_LEAF_TTL, NOW)
    assert validate_svid([issued.certificate], ca.roots, NOW, trust_domain="cluster.local") == USERS
    assert validate_svid([issued.certificate, *ca.roots], ca.roots, NOW) == USERS  # leaf → root


def test_two_uri_sans() -> None:
    refused(
        [leaf(uris=(str(USERS), "spiffe://cluster.local/ns/default/sa/orders"))], "exactly one URI SAN.*2"
    )


def test_no_uri_san() -> None:
    refused([leaf(uris=())], "exactly one URI SAN.*0")


def test_a_ca_leaf() -> None:
    refused([leaf(ca=True)], "is a CA")


def test_key_cert_sign() -> None:
    refused([leaf(usage={"digital_signature": True, "cert_sign": True})], "keyCertSign")


def test_no_digital_signature() -> None:
    refused([leaf(usage={})], "lacks digitalSignature")


def test_key_usage_not_critical() -> None:
    refused([leaf(usage_critical=False)], "keyUsage must be critical")


@pytest.mark.parametrize(
    ("eku", "missing"),
    [((ExtendedKeyUsageOID.SERVER_AUTH,), "clientAuth"), ((ExtendedKeyUsageOID.CLIENT_AUTH,), "serverAuth")],
)
def test_eku_needs_both(eku: tuple[x509.ObjectIdentifier, ...], missing: str) -> None:
    refused([leaf(eku=eku)], f"lacks {missing}")


def test_a_non_spiffe_scheme() -> None:
    refused([leaf(uris=("https://cluster.local/ns/default/sa/users",))], "must start with 'spiffe://'")


def test_an_uppercase_trust_domain() -> None:
    refused([leaf(uris=("spiffe://Cluster.local/ns/default/sa/users",))], "lower-case")


def test_dot_dot_segments() -> None:
    refused([leaf(uris=("spiffe://cluster.local/ns/../sa/users",))], r"must not be '\.' or '\.\.'")


def test_expired() -> None:
    refused([leaf(not_after=NOW - timedelta(seconds=1))], "expired")


def test_not_yet_valid() -> None:
    refused([leaf(not_before=NOW + timedelta(minutes=5))], "not valid before")


def test_from_another_root() -> None:
    refused([leaf(OTHER_ROOT)], "does not chain to a trusted root")


def test_another_trust_domain() -> None:
    with pytest.raises(InvalidSvid, match=r"trust domain 'cluster\.local' is not this mesh's"):
        validate_svid([leaf()], [ROOT.cert], NOW, trust_domain="example.org")


def test_through_an_intermediate_and_its_root_only() -> None:
    ikey = ec.generate_private_key(ec.SECP256R1())
    iname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")])
    inter = (
        x509.CertificateBuilder()
        .subject_name(iname)
        .issuer_name(ROOT.cert.subject)
        .public_key(ikey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .sign(ROOT.key, hashes.SHA256())
    )
    child = leaf(Root(inter, ikey))
    assert validate_svid([child, inter], [ROOT.cert], NOW) == USERS
    refused([child], "does not chain to a trusted root")  # the intermediate is needed
    refused([child, inter], "does not chain to a trusted root", roots=[OTHER_ROOT.cert])
    refused([child, leaf()], "not a CA")  # a leaf posing as the intermediate
