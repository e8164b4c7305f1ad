"""The mesh CA: SPIFFE IDs, the root, leaf certificates, intermediates, files, and real mTLS."""

from __future__ import annotations

import re
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from control_plane.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CLOCK_SKEW,
    DEFAULT_LEAF_TTL,
    ROOT_CERT_FILE,
    CAError,
    CertificateAuthority,
    InvalidCSR,
    SpiffeId,
    WorkloadFiles,
    build_csr,
    generate_private_key,
    issue_workload_files,
)
from control_plane.spiffe import spiffe_id_of

NOW = datetime(2030, 3, 4, 5, 6, 7, tzinfo=UTC)
USERS = SpiffeId("cluster.local", "default", "users")
ORDERS = SpiffeId("cluster.local", "shop", "orders")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster.local", now=NOW)


def ext(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def sign(ca: CertificateAuthority, identity: SpiffeId = USERS, **kw: Any) -> x509.Certificate:
    key = generate_private_key()
    issued = ca.sign_csr(
        build_csr(key, identity), identity, kw.get("ttl", DEFAULT_LEAF_TTL), kw.get("now", NOW)
    )
    return issued.certificate


def verify(
    leaf: x509.Certificate, roots: list[x509.Certificate], chain: list[x509.Certificate], at: datetime
) -> None:
    verifier = PolicyBuilder().store(Store(roots)).time(at).build_client_verifier()
    verified = verifier.verify(leaf, chain)
    assert verified.chain[0] == leaf
    assert verified.chain[-1] in roots


# -- SPIFFE IDs --------------------------------------------------------------------------------


def test_spiffe_id_round_trips() -> None:
    uri = "spiffe://cluster.local/ns/default/sa/users"
    assert SpiffeId.parse(uri) == USERS
    assert str(USERS) == uri


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://cluster.local/ns/default/sa/users", "must start with 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/default/sa/users", "must start with 'spiffe://'"),
        ("spiffe://Cluster.local/ns/default/sa/users", "lower-case"),
        ("spiffe://cluster.local:8443/ns/default/sa/users", "port"),
        ("spiffe://admin@cluster.local/ns/default/sa/users", "user info"),
        ("spiffe:///ns/default/sa/users", "trust domain is empty"),
        ("spiffe://cluster.local", "has no path"),
        ("spiffe://cluster.local/", "has no path"),
        ("spiffe://cluster.local/ns/default/sa/users/", "exactly /ns/<namespace>/sa/<service>"),
        ("spiffe://cluster.local/ns/default/sa", "exactly /ns/<namespace>/sa/<service>"),
        ("spiffe://cluster.local/namespace/default/sa/users", "exactly /ns/<namespace>/sa/<service>"),
        ("spiffe://cluster.local/ns//sa/users", "namespace is empty"),
        ("spiffe://cluster.local/ns/../sa/users", "namespace must not be '.' or '..'"),
        ("spiffe://cluster.local/ns/default/sa/us*rs", "service 'us*rs' may only contain"),
        ("spiffe://cluster.local/ns/default/sa/users?x=1", "query"),
        ("spiffe://cluster.local/ns/default/sa/users#top", "fragment"),
        ("spiffe://cluster.local/ns/default/sa/us%65rs", "percent-encoding"),
    ],
)
def test_spiffe_id_parse_rejects_with_reason(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        SpiffeId.parse(uri)


def test_spiffe_id_is_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="service is empty"):
        SpiffeId("cluster.local", "default", "")
    with pytest.raises(AttributeError):
        USERS.service = "orders"  # type: ignore[misc]


# -- the root ------------------------------------------------------------------------------------


def test_root_ca_properties(ca: CertificateAuthority) -> None:
    root = ca.certificate
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(root.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert root.issuer == root.subject
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ext(root, x509.SubjectKeyIdentifier).value.digest
    assert root.not_valid_before_utc == NOW - CLOCK_SKEW
    assert root.not_valid_after_utc == NOW + timedelta(days=3650)
    assert ca.trust_domain == "cluster.local"
    assert ca.trust_bundle() == root.public_bytes(serialization.Encoding.PEM)
    assert ca.chain_pem() == b""


def test_save_writes_private_key_0600_and_load_round_trips(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "certs")
    key_file = tmp_path / "certs" / CA_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [CA_KEY_FILE, CA_CERT_FILE]
    loaded = CertificateAuthority.load(tmp_path / "certs")
    assert loaded.certificate == ca.certificate
    assert loaded.trust_bundle() == ca.trust_bundle()
    verify(sign(loaded), ca.roots, [], NOW)


def test_load_rejects_a_key_that_does_not_match(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path)
    other = generate_private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / CA_KEY_FILE).write_bytes(other)
    with pytest.raises(CAError, match="does not match"):
        CertificateAuthority.load(tmp_path)


def test_load_of_a_missing_dir_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CAError, match=r"ca\.pem does not exist"):
        CertificateAuthority.load(tmp_path / "nope")


# -- leaves ----------------------------------------------------------------------------------------


def test_leaf_properties(ca: CertificateAuthority) -> None:
    leaf = sign(ca)
    san = ext(leaf, x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/users")]
    assert san.critical  # the subject is empty
    assert leaf.subject == x509.Name([])
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(leaf, x509.KeyUsage).value
    assert ext(leaf, x509.KeyUsage).critical
    assert ku.digital_signature
    assert not (ku.key_cert_sign or ku.crl_sign or ku.key_encipherment or ku.content_commitment)
    assert set(ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca.certificate, x509.SubjectKeyIdentifier).value.digest
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=1)
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)
    assert leaf.issuer == ca.certificate.subject
    assert spiffe_id_of(leaf) == USERS


def test_leaf_verifies_to_the_root_only_while_valid(ca: CertificateAuthority) -> None:
    leaf = sign(ca, ttl=timedelta(hours=2))
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=2)
    verify(leaf, ca.roots, [], NOW)
    verify(leaf, ca.roots, [], NOW - timedelta(seconds=30))  # clock skew allowance
    with pytest.raises(VerificationError):
        verify(leaf, ca.roots, [], NOW + timedelta(hours=2, seconds=1))
    other = CertificateAuthority.create("cluster.local", now=NOW)
    with pytest.raises(VerificationError):
        verify(leaf, other.roots, [], NOW)


def test_serials_are_random(ca: CertificateAuthority) -> None:
    assert sign(ca).serial_number != sign(ca).serial_number


def test_csr_names_are_ignored(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin"),
                    x509.DNSName("evil.example.com"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    issued = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), USERS, DEFAULT_LEAF_TTL, NOW)
    leaf = issued.certificate
    assert list(ext(leaf, x509.SubjectAlternativeName).value) == [x509.UniformResourceIdentifier(str(USERS))]
    assert leaf.subject == x509.Name([])
    assert leaf.public_key() == key.public_key()


def test_garbage_csr_is_invalid(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidCSR, match="not a parsable PEM certificate request"):
        ca.sign_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            USERS,
            DEFAULT_LEAF_TTL,
            NOW,
        )
    with pytest.raises(InvalidCSR):
        ca.sign_csr(b"hello", USERS, DEFAULT_LEAF_TTL, NOW)


def test_badly_signed_csr_is_invalid(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(build_csr(generate_private_key(), USERS))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature's s value
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidCSR, match="signature does not verify"):
        ca.sign_csr(tampered, USERS, DEFAULT_LEAF_TTL, NOW)


def test_weak_csr_key_is_invalid(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    with pytest.raises(InvalidCSR, match="1024 bits"):
        ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), USERS, DEFAULT_LEAF_TTL, NOW)


def test_invalid_csr_is_a_ca_error() -> None:
    assert issubclass(InvalidCSR, CAError)


def test_signing_refuses_naive_time_other_trust_domain_and_expired_ca(ca: CertificateAuthority) -> None:
    csr = build_csr(generate_private_key(), USERS)
    with pytest.raises(ValueError, match="timezone-aware"):
        ca.sign_csr(csr, USERS, DEFAULT_LEAF_TTL, datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="ttl must be positive"):
        ca.sign_csr(csr, USERS, timedelta(0), NOW)
    with pytest.raises(CAError, match=r"trust domain 'cluster\.local', not 'other\.mesh'"):
        ca.sign_csr(csr, SpiffeId("other.mesh", "default", "users"), DEFAULT_LEAF_TTL, NOW)
    with pytest.raises(CAError, match="expired"):
        ca.sign_csr(csr, USERS, DEFAULT_LEAF_TTL, NOW + timedelta(days=3651))


def test_leaf_never_outlives_the_ca() -> None:
    short = CertificateAuthority.create("cluster.local", now=NOW, validity=timedelta(hours=1))
    leaf = sign(short, ttl=timedelta(hours=24))
    assert leaf.not_valid_after_utc == short.certificate.not_valid_after_utc


# -- an intermediate CA under an outside root ----------------------------------------------------------


@dataclass
class ExternalPKI:
    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(False, False, False, False, False, True, True, False, False)


def make_external_pki(now: datetime) -> ExternalPKI:
    """A corporate root (P-384) that signs a mesh intermediate (P-256), built without the mesh CA code."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(_name("Example Root"))
        .issuer_name(_name("Example Root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(_name("Mesh Intermediate"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA384())
    )
    return ExternalPKI(root, intermediate, key)


def write_intermediate_dir(pki: ExternalPKI, directory: Path, *, root_in_ca_pem: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_pem = pki.intermediate.public_bytes(pem)
    if root_in_ca_pem:
        ca_pem += pki.root.public_bytes(pem)
    else:
        (directory / ROOT_CERT_FILE).write_bytes(pki.root.public_bytes(pem))
    (directory / CA_CERT_FILE).write_bytes(ca_pem)
    (directory / CA_KEY_FILE).write_bytes(
        pki.intermediate_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return directory


@pytest.mark.parametrize("root_in_ca_pem", [False, True], ids=["root.pem", "root-appended-to-ca.pem"])
def test_intermediate_ca_leaves_verify_to_the_outside_root(tmp_path: Path, root_in_ca_pem: bool) -> None:
    pki = make_external_pki(NOW)
    ca = CertificateAuthority.load(
        write_intermediate_dir(pki, tmp_path / "ca", root_in_ca_pem=root_in_ca_pem)
    )
    assert ca.trust_domain is None  # the outside intermediate names none; any trust domain is signed
    assert ca.trust_bundle() == pki.root.public_bytes(serialization.Encoding.PEM)
    assert x509.load_pem_x509_certificates(ca.chain_pem()) == [pki.intermediate]
    issued = ca.sign_csr(build_csr(generate_private_key(), USERS), USERS, DEFAULT_LEAF_TTL, NOW)
    assert issued.full_chain_pem == issued.cert_pem + pki.intermediate.public_bytes(
        serialization.Encoding.PEM
    )
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    verify(issued.certificate, [pki.root], chain, NOW)
    with pytest.raises(VerificationError):  # without the intermediate there is no path
        verify(issued.certificate, [pki.root], [], NOW)
    # save + load keeps the layout: the root goes to root.pem, the intermediate stays in ca.pem
    ca.save(tmp_path / "copy")
    again = CertificateAuthority.load(tmp_path / "copy")
    assert again.trust_bundle() == ca.trust_bundle()
    assert again.chain_pem() == ca.chain_pem()


def test_intermediate_without_root_is_refused(tmp_path: Path) -> None:
    pki = make_external_pki(NOW)
    directory = write_intermediate_dir(pki, tmp_path)
    (directory / ROOT_CERT_FILE).unlink()
    with pytest.raises(
        CAError, match=r"intermediate but no root was given; put the root certificate\(s\) in root.pem"
    ):
        CertificateAuthority.load(directory)


def test_intermediate_with_the_wrong_root_is_refused(tmp_path: Path) -> None:
    pki = make_external_pki(NOW)
    directory = write_intermediate_dir(pki, tmp_path)
    stranger = make_external_pki(NOW).root
    (directory / ROOT_CERT_FILE).write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CAError, match="does not chain to any of the given root"):
        CertificateAuthority.load(directory)


# -- workload files -----------------------------------------------------------------------------------------


def test_issue_workload_files(ca: CertificateAuthority, tmp_path: Path) -> None:
    files = issue_workload_files(ca, USERS, tmp_path / "out", ttl=timedelta(hours=3), now=NOW)
    assert files == WorkloadFiles(
        cert=tmp_path / "out" / "users.pem",
        key=tmp_path / "out" / "users-key.pem",
        ca=tmp_path / "out" / "ca.pem",
    )
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert files.ca.read_bytes() == ca.trust_bundle()
    (leaf,) = x509.load_pem_x509_certificates(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert leaf.public_key() == key.public_key()
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=3)
    assert spiffe_id_of(leaf) == USERS
    assert not [p for p in files.cert.parent.iterdir() if p.name.endswith(".tmp")]


def test_issue_workload_files_into_the_root_ca_dir_keeps_ca_pem(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    ca.save(tmp_path)
    before = (tmp_path / CA_CERT_FILE).read_bytes()
    files = issue_workload_files(ca, USERS, tmp_path, now=NOW)
    assert files.ca.read_bytes() == before
    assert CertificateAuthority.load(tmp_path).certificate == ca.certificate


def test_issue_workload_files_refuses_a_foreign_ca_pem(ca: CertificateAuthority, tmp_path: Path) -> None:
    CertificateAuthority.create("cluster.local", now=NOW).save(tmp_path)
    with pytest.raises(CAError, match="does not hold this CA's root certificate"):
        issue_workload_files(ca, USERS, tmp_path, now=NOW)
    assert not (tmp_path / "users.pem").exists()


def test_intermediate_workload_file_holds_leaf_then_chain(tmp_path: Path) -> None:
    pki = make_external_pki(NOW)
    ca = CertificateAuthority.load(write_intermediate_dir(pki, tmp_path / "ca"))
    files = issue_workload_files(ca, USERS, tmp_path / "out", now=NOW)
    leaf, intermediate = x509.load_pem_x509_certificates(files.cert.read_bytes())
    assert spiffe_id_of(leaf) == USERS
    assert intermediate == pki.intermediate
    assert x509.load_pem_x509_certificates(files.ca.read_bytes()) == [pki.root]


# -- real mutual TLS over loopback ---------------------------------------------------------------------------
# OpenSSL checks validity against the real clock, so these certificates are issued at the current time.


@dataclass
class Outcome:
    server_peer: dict[str, Any] | None = None
    server_error: BaseException | None = None
    client_peer: dict[str, Any] | None = None
    client_error: BaseException | None = None
    version: str | None = None
    reply: bytes = b""


def server_context(files: WorkloadFiles, trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(cafile=trust)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: WorkloadFiles, trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the peer is named by its SPIFFE URI SAN, not a DNS name
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(cafile=trust)
    return ctx


def talk(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Outcome:
    outcome = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                outcome.server_peer = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            outcome.server_error = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw) as tls,
        ):
            outcome.client_peer = tls.getpeercert()
            outcome.version = tls.version()
            outcome.reply = tls.recv(2)
    except (ssl.SSLError, OSError) as exc:
        outcome.client_error = exc
    finally:
        thread.join(20)
        listener.close()
    return outcome


def _uris(peer: dict[str, Any] | None) -> list[str]:
    assert peer is not None
    return [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI"]


@pytest.fixture
def live_ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster.local", now=datetime.now(UTC))


def test_mtls_handshake_between_two_issued_certs(live_ca: CertificateAuthority, tmp_path: Path) -> None:
    server = issue_workload_files(live_ca, USERS, tmp_path)
    client = issue_workload_files(live_ca, ORDERS, tmp_path)
    outcome = talk(server_context(server, server.ca), client_context(client, client.ca))
    assert outcome.server_error is None and outcome.client_error is None
    assert outcome.version == "TLSv1.3"
    assert outcome.reply == b"ok"
    assert _uris(outcome.server_peer) == [str(ORDERS)]
    assert _uris(outcome.client_peer) == [str(USERS)]


def test_mtls_through_an_intermediate_ca(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = CertificateAuthority.load(write_intermediate_dir(make_external_pki(now), tmp_path / "ca"))
    server = issue_workload_files(ca, USERS, tmp_path / "out", now=now)
    client = issue_workload_files(ca, ORDERS, tmp_path / "out", now=now)
    outcome = talk(server_context(server, server.ca), client_context(client, client.ca))
    assert outcome.server_error is None and outcome.client_error is None
    assert outcome.reply == b"ok"
    assert _uris(outcome.server_peer) == [str(ORDERS)]


def test_server_refuses_a_client_cert_from_another_ca(live_ca: CertificateAuthority, tmp_path: Path) -> None:
    server = issue_workload_files(live_ca, USERS, tmp_path / "mesh")
    stranger_ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    # the stranger's client trusts our mesh root, so only the server side can refuse
    stranger = issue_workload_files(stranger_ca, ORDERS, tmp_path / "stranger")
    outcome = talk(server_context(server, server.ca), client_context(stranger, server.ca))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert outcome.server_peer is None
    assert outcome.reply == b""
    assert outcome.client_error is not None


def test_client_refuses_a_server_cert_from_another_ca(live_ca: CertificateAuthority, tmp_path: Path) -> None:
    client = issue_workload_files(live_ca, ORDERS, tmp_path / "mesh")
    stranger_ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    impostor = issue_workload_files(stranger_ca, USERS, tmp_path / "stranger")
    outcome = talk(server_context(impostor, client.ca), client_context(client, client.ca))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert outcome.client_peer is None
    assert outcome.server_error is not None
