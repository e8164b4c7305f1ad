"""Who may call the policy API: bearer JWTs signed by the control plane's own key.

The control plane keeps an ECDSA P-256 key in its data dir (``api-signing-key.pem``, mode 0600,
created on first start). ``meshctl token create`` signs tokens with it (ES256); both APIs verify
them with its public half. A token carries::

    iss "grpc-mesh"   aud "grpc-mesh-api"   sub  who it was issued to
    role "read" | "admin"                   iat, exp  (seconds since the epoch)
                                            nbf  (optional: not valid before)

A token lives at most MAX_TTL (30 days), from iat to exp: nothing revokes a token short of
replacing the signing key, so none is minted or accepted for longer.

``read`` may get, list, see history and list sidecars; ``admin`` may do everything. A missing or
bad token is :class:`Unauthenticated` (401 / UNAUTHENTICATED); a good token whose role does not
cover the operation is :class:`PermissionDenied` (403 / PERMISSION_DENIED).

pyjwt checks the signature (ES256 only), issuer, audience and that the claims are present; the
times (exp, iat, nbf when present, and the lifetime) are checked here against an injected clock,
with a small leeway for clock skew.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control_plane.api_errors import PermissionDenied, Unauthenticated
from control_plane.pki import generate_private_key, private_key_pem

SIGNING_KEY_FILE = "api-signing-key.pem"
ISSUER = "grpc-mesh"
AUDIENCE = "grpc-mesh-api"
ALGORITHM = "ES256"
LEEWAY = timedelta(seconds=10)
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(days=30)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Role(StrEnum):
    READ = "read"
    ADMIN = "admin"


class Operation(StrEnum):
    """The policy API's operations, named alike on both APIs (REST route names, gRPC methods)."""

    APPLY = "apply"
    GET = "get"
    LIST = "list"
    DELETE = "delete"
    HISTORY = "history"
    ROLLBACK = "rollback"
    SIDECARS = "sidecars"


READ_OPERATIONS = frozenset({Operation.GET, Operation.LIST, Operation.HISTORY, Operation.SIDECARS})
ROLE_OPERATIONS: dict[Role, frozenset[Operation]] = {
    Role.READ: READ_OPERATIONS,
    Role.ADMIN: frozenset(Operation),
}


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role


def authorize(principal: Principal, operation: Operation) -> None:
    """Raise PermissionDenied unless the principal's role covers the operation."""
    if operation not in ROLE_OPERATIONS[principal.role]:
        raise PermissionDenied(
            f"role {principal.role.value!r} (subject {principal.subject!r}) may not {operation.value}; "
            f"it needs an admin token"
        )


class SigningKeyError(Exception):
    """The signing key file is missing, unreadable or not an ECDSA P-256 private key."""


def signing_key_path(data_dir: Path) -> Path:
    return data_dir / SIGNING_KEY_FILE


def load_signing_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    path = signing_key_path(data_dir)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(
            f"no API signing key at {path}: start the control plane on this data dir once to create it"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise SigningKeyError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{path} is not an ECDSA P-256 key (ES256 needs one)")
    return key


def load_or_create_signing_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The data dir's signing key, created (mode 0600) if there is none yet.

    The new key is written to a temporary file and hard-linked into place, so two processes
    starting at once agree on one key and nobody ever reads a half-written file.
    """
    path = signing_key_path(data_dir)
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{SIGNING_KEY_FILE}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(private_key_pem(generate_private_key()))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return load_signing_key(data_dir)


def mint_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    role: Role,
    subject: str,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
) -> str:
    return sign_token(key, audience=AUDIENCE, subject=subject, now=now, ttl=ttl, role=role.value)


def sign_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    audience: str,
    subject: str,
    now: datetime,
    ttl: timedelta,
    **extra: str,
) -> str:
    """An ES256 JWT for `audience` with the standard claims and `extra` ones."""
    if not subject:
        raise ValueError("a token needs a subject")
    if ttl <= timedelta(0):
        raise ValueError(f"a token's ttl must be positive, got {ttl}")
    if ttl > MAX_TTL:
        raise ValueError(f"a token's ttl must be at most {MAX_TTL.days} days, got {ttl}")
    issued = int(now.timestamp())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": audience,
        "sub": subject,
        **extra,
        "iat": issued,
        "exp": issued + int(ttl.total_seconds()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


_DECODE_OPTIONS: Any = {
    "require": ["iss", "aud", "sub", "iat", "exp"],
    # Checked below against the injected clock instead of the wall clock.
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
}


class TokenVerifier:
    """Turns a bearer token into a Principal, or raises Unauthenticated saying why not."""

    def __init__(
        self, public_key: ec.EllipticCurvePublicKey, *, clock: Clock = utc_now, leeway: timedelta = LEEWAY
    ) -> None:
        self._key = public_key
        self._clock = clock
        self._leeway = leeway.total_seconds()

    def authenticate(self, authorization: str | None) -> Principal:
        """Check an ``authorization`` header (HTTP) or metadata value (gRPC): ``Bearer <jwt>``."""
        if not authorization:
            raise Unauthenticated(
                "no bearer token: send 'authorization: Bearer <token>' (mint one with meshctl token create)"
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must be 'Bearer <token>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> Principal:
        claims = self.claims(token, AUDIENCE)
        subject, role = claims["sub"], claims.get("role")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("bearer token: sub must be a non-empty string")
        if role not in {r.value for r in Role}:
            raise Unauthenticated(f"bearer token: role must be 'read' or 'admin', got {role!r}")
        return Principal(subject, Role(role))

    def claims(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a token for `audience` whose signature, issuer and times check out."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                options=_DECODE_OPTIONS,
            )
        except jwt.InvalidSignatureError:
            raise Unauthenticated("bearer token: the signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"bearer token: {exc}") from None
        now = self._clock().timestamp()
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
        if not _is_number(exp) or not _is_number(iat) or not _is_number(nbf):
            raise Unauthenticated("bearer token: exp, iat and nbf must be numbers")
        if now > exp + self._leeway:
            raise Unauthenticated(f"bearer token: expired at {_time(exp)}")
        if iat > now + self._leeway:
            raise Unauthenticated("bearer token: issued in the future (iat)")
        if nbf > now + self._leeway:
            raise Unauthenticated(f"bearer token: not valid before {_time(nbf)} (nbf)")
        if exp - iat > MAX_TTL.total_seconds():
            raise Unauthenticated(
                f"bearer token: valid for longer than {MAX_TTL.days} days (exp - iat); mint a shorter one"
            )
        return claims


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _time(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # beyond the years datetime can show
        return f"{timestamp:g} seconds since the epoch"
