"""API tokens: the signing key on disk, minting, and every way verification refuses a token."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from control_plane.api_errors import PermissionDenied, Unauthenticated
from control_plane.auth import (
    AUDIENCE,
    ISSUER,
    LEEWAY,
    MAX_TTL,
    SIGNING_KEY_FILE,
    Operation,
    Principal,
    Role,
    SigningKeyError,
    TokenVerifier,
    authorize,
    load_or_create_signing_key,
    load_signing_key,
    mint_token,
)
from control_plane.pki import private_key_pem

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def verifier_at(key: ec.EllipticCurvePrivateKey, now: datetime) -> TokenVerifier:
    return TokenVerifier(key.public_key(), clock=lambda: now)


def test_the_key_is_created_once_with_mode_0600_and_then_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = load_or_create_signing_key(data_dir)
    path = data_dir / SIGNING_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_signing_key(data_dir)
    assert private_key_pem(again) == private_key_pem(key)
    assert sorted(p.name for p in data_dir.iterdir()) == [SIGNING_KEY_FILE]
    assert isinstance(load_signing_key(data_dir).curve, ec.SECP256R1)


def test_loading_refuses_a_missing_a_shared_or_a_foreign_key(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="start the control plane"):
        load_signing_key(tmp_path)
    load_or_create_signing_key(tmp_path)
    path = tmp_path / SIGNING_KEY_FILE
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_signing_key(tmp_path)
    path.write_bytes(private_key_pem(ec.generate_private_key(ec.SECP384R1())))
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match="P-256"):
        load_signing_key(tmp_path)
    path.write_bytes(b"not a key")
    with pytest.raises(SigningKeyError, match="not a PEM private key"):
        load_signing_key(tmp_path)


def test_a_minted_token_carries_the_claims_and_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = mint_token(key, role=Role.READ, subject="ci", now=NOW, ttl=timedelta(minutes=5))
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ci",
        "role": "read",
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 300,
    }
    assert verifier_at(key, NOW).verify(token) == Principal("ci", Role.READ)
    assert verifier_at(key, NOW).authenticate(f"Bearer {token}") == Principal("ci", Role.READ)
    assert verifier_at(key, NOW).authenticate(f"bearer  {token} ") == Principal("ci", Role.READ)


def test_expiry_is_checked_on_the_injected_clock_with_a_small_leeway() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = mint_token(key, role=Role.ADMIN, subject="ops", now=NOW, ttl=timedelta(hours=1))
    expiry = NOW + timedelta(hours=1)
    assert verifier_at(key, expiry + LEEWAY).verify(token).role is Role.ADMIN
    with pytest.raises(Unauthenticated, match="expired at 2030-06-01T13:00:00"):
        verifier_at(key, expiry + LEEWAY + timedelta(seconds=1)).verify(token)
    with pytest.raises(Unauthenticated, match="issued in the future"):
        verifier_at(key, NOW - LEEWAY - timedelta(seconds=1)).verify(token)


def test_a_token_signed_by_another_key_is_refused() -> None:
    ours = ec.generate_private_key(ec.SECP256R1())
    theirs = ec.generate_private_key(ec.SECP256R1())
    token = mint_token(theirs, role=Role.ADMIN, subject="mallory", now=NOW)
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        verifier_at(ours, NOW).verify(token)


def _signed(claims: dict[str, object], key: ec.EllipticCurvePrivateKey, algorithm: str = "ES256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


GOOD_CLAIMS: dict[str, object] = {
    "iss": ISSUER,
    "aud": AUDIENCE,
    "sub": "ops",
    "role": "admin",
    "iat": int(NOW.timestamp()),
    "exp": int(NOW.timestamp()) + 60,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iss": "someone-else"}, "issuer"),
        ({"aud": "another-api"}, "(?i)audience"),
        ({"exp": None}, "exp"),
        ({"iat": None}, "iat"),
        ({"sub": None}, "sub"),
        ({"role": "root"}, "role must be 'read' or 'admin'"),
        ({"role": None}, "role must be"),
    ],
)
def test_claims_that_are_wrong_or_missing_are_refused(change: dict[str, object], message: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    claims = {k: v for k, v in {**GOOD_CLAIMS, **change}.items() if v is not None}
    with pytest.raises(Unauthenticated, match=message):
        verifier_at(key, NOW).verify(_signed(claims, key))


def test_only_es256_is_accepted() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    es384 = _signed(GOOD_CLAIMS, p384, "ES384")
    with pytest.raises(Unauthenticated, match="alg value is not allowed"):
        TokenVerifier(key.public_key(), clock=lambda: NOW).verify(es384)
    unsigned = jwt.encode(GOOD_CLAIMS, "", algorithm="none")
    with pytest.raises(Unauthenticated):
        verifier_at(key, NOW).verify(unsigned)


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "token-without-scheme"]
)
def test_a_missing_or_malformed_authorization_header_is_unauthenticated(header: str | None) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Unauthenticated):
        verifier_at(key, NOW).authenticate(header)


def test_garbage_tokens_are_unauthenticated() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for token in ["abc", "a.b.c", "é"]:
        with pytest.raises(Unauthenticated, match="bearer token"):
            verifier_at(key, NOW).verify(token)


def test_read_may_only_read_and_admin_may_do_everything() -> None:
    reader = Principal("viewer", Role.READ)
    admin = Principal("ops", Role.ADMIN)
    for operation in Operation:
        authorize(admin, operation)
        if operation in {Operation.GET, Operation.LIST, Operation.HISTORY, Operation.SIDECARS}:
            authorize(reader, operation)
        else:
            with pytest.raises(PermissionDenied, match=f"may not {operation.value}"):
                authorize(reader, operation)


def test_minting_refuses_an_empty_subject_or_ttl() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="subject"):
        mint_token(key, role=Role.READ, subject="", now=NOW)
    with pytest.raises(ValueError, match="positive"):
        mint_token(key, role=Role.READ, subject="x", now=NOW, ttl=timedelta(0))


def test_a_token_lives_at_most_thirty_days() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert timedelta(days=30) == MAX_TTL
    longest = mint_token(key, role=Role.READ, subject="ci", now=NOW, ttl=MAX_TTL)
    assert verifier_at(key, NOW + MAX_TTL).verify(longest) == Principal("ci", Role.READ)
    with pytest.raises(ValueError, match="at most 30 days"):
        mint_token(key, role=Role.READ, subject="ci", now=NOW, ttl=MAX_TTL + timedelta(seconds=1))
    # Signed with the key some other way: refused all the same.
    year = _signed({**GOOD_CLAIMS, "exp": int(NOW.timestamp()) + 365 * 86400}, key)
    with pytest.raises(Unauthenticated, match="valid for longer than 30 days"):
        verifier_at(key, NOW).verify(year)


def test_not_before_is_checked_when_present() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    start = int(NOW.timestamp()) + 600
    token = _signed({**GOOD_CLAIMS, "exp": start + 60, "nbf": start}, key)
    with pytest.raises(Unauthenticated, match=r"not valid before 2030-06-01T12:10:00\+00:00 \(nbf\)"):
        verifier_at(key, NOW).verify(token)
    with pytest.raises(Unauthenticated, match="not valid before"):
        verifier_at(key, NOW + timedelta(seconds=600) - LEEWAY - timedelta(seconds=1)).verify(token)
    assert verifier_at(key, NOW + timedelta(seconds=600) - LEEWAY).verify(token).subject == "ops"
    for nbf in ("soon", True):
        with pytest.raises(Unauthenticated, match="must be numbers"):
            verifier_at(key, NOW).verify(_signed({**GOOD_CLAIMS, "nbf": nbf}, key))
