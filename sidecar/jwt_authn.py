"""JWT rules: the pushed RequestAuthentications, compiled once per snapshot, and the verification
of one token against them.

`compile_jwt_authn(policies)` merges the `jwtRules` of every RequestAuthentication the sidecar
receives (the control plane sends those of its namespace and of `mesh-system` whose selector
matches it) into rules by issuer. `JwtAuthn.verify(token, header, keys_of, now)` checks, in order:
an RS256 or ES256 header; an `iss` some rule names; that the token came from a header that rule
reads; the signature, with a key of the rule's JWKS (by `kid` when the token names one); `exp`
and `nbf` (60 s of clock skew allowed, as Envoy); and, when the rule lists `audiences`, that `aud`
names one of them. Any failure raises `JwtRejected` saying which check failed.

A spec the sidecar cannot use (an inline `jwks` without a usable key, a missing issuer or key
source) raises `PolicyRejected` naming the field; discovery NACKs and keeps the last good
snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from sidecar.config import Policy
from sidecar.jwks import ALGORITHMS, JwksError, KeySet, parse_jwks
from sidecar.traffic import PolicyRejected, _dicts, _get

KIND = "RequestAuthentication"
CLOCK_SKEW_SECONDS = 60.0
DEFAULT_LOCATION = (b"authorization", "Bearer ")

_JWS = jwt.PyJWS(options={"verify_signature": True})
_UNVERIFIED = {"verify_signature": False}


class JwtRejected(Exception):
    """A token that fails a check; the message says which (safe to show the caller)."""


class UnknownKey(JwtRejected):
    """The token names a `kid` its issuer's key set lacks: the issuer may have rotated its keys,
    so `uris` (the fetched sets) are worth fetching again."""

    def __init__(self, message: str, uris: tuple[str, ...]) -> None:
        super().__init__(message)
        self.uris = uris


@dataclass(frozen=True, slots=True, eq=False)
class RequestAuth:
    """What a validated token says, for AuthorizationPolicy (`request.auth.*`). Compared and
    hashed by identity: the token cache hands out one object per token, which keys the
    authorization decisions made for it."""

    issuer: str
    principal: str  # "<iss>/<sub>": requestPrincipals, request.auth.principal
    audiences: tuple[str, ...]
    presenter: str  # azp
    claims: Mapping[str, Any]
    expires: float | None  # exp, seconds since the epoch


@dataclass(frozen=True, slots=True)
class JwtRule:
    issuer: str
    audiences: frozenset[str]  # empty: any audience (or none)
    jwks_uri: str  # "" when the keys are inline
    inline_keys: KeySet | None
    locations: tuple[tuple[bytes, str], ...]  # (header, prefix)
    forward: bool  # forwardOriginalToken: keep the token's header for the app


@dataclass(frozen=True, slots=True)
class JwtAuthn:
    rules: Mapping[str, tuple[JwtRule, ...]]  # by issuer (several policies may name one issuer)
    locations: Mapping[bytes, tuple[str, ...]]  # every header a token may come in → its prefixes
    uris: frozenset[str]  # the jwksUris to keep fetched

    @property
    def empty(self) -> bool:
        return not self.rules

    def forwarded(self, issuer: str, header: bytes) -> bool:
        """Whether the app sees the token's header (forwardOriginalToken of the rule it came by)."""
        return any(rule.forward for rule in self.rules.get(issuer, ()) if _reads(rule, header))

    def verify(
        self, token: str, header: bytes, keys_of: Callable[[JwtRule], KeySet | None], now: float
    ) -> RequestAuth:
        try:
            unverified = _JWS.decode_complete(token, options=_UNVERIFIED)  # type: ignore[arg-type]
        except jwt.PyJWTError:
            raise JwtRejected("Jwt is not in the JWS compact form") from None
        algorithm = unverified["header"].get("alg")
        if algorithm not in ALGORITHMS:
            raise JwtRejected(f"Jwt algorithm {algorithm!r} is not accepted (RS256 or ES256)")
        kid = unverified["header"].get("kid")
        kid = kid if isinstance(kid, str) else None
        claims = _claims(unverified["payload"])
        issuer = claims.get("iss")
        rules = self.rules.get(issuer, ()) if isinstance(issuer, str) else ()
        if not rules:
            raise JwtRejected("Jwt issuer is not configured")
        rules = tuple(rule for rule in rules if _reads(rule, header))
        if not rules:
            raise JwtRejected(f"Jwt of issuer {issuer} is not accepted in header {header.decode()!r}")
        failure = "Jwt verification fails"
        unknown_kid: list[str] = []
        for rule in rules:
            keys = keys_of(rule)
            if keys is None:
                failure = f"Jwks of issuer {issuer} is not available"
                continue
            candidates = keys.candidates(kid, algorithm)
            if not candidates:
                failure = "Jwt verification fails: no key " + (
                    f"with kid {kid!r}" if kid else f"for {algorithm}"
                )
                if kid and rule.jwks_uri:
                    unknown_kid.append(rule.jwks_uri)
                continue
            if any(_signed_by(token, key, algorithm) for key in candidates):
                return _checked(rule, claims, now)
        if unknown_kid:
            raise UnknownKey(failure, tuple(unknown_kid))
        raise JwtRejected(failure)


NO_JWT_AUTHN = JwtAuthn({}, {}, frozenset())


def _reads(rule: JwtRule, header: bytes) -> bool:
    return any(name == header for name, _ in rule.locations)


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise JwtRejected("Jwt payload is not JSON") from None
    if not isinstance(claims, dict):
        raise JwtRejected("Jwt payload is not a JSON object")
    return claims


def _signed_by(token: str, key: jwt.PyJWK, algorithm: str) -> bool:
    try:
        _JWS.decode(token, key.key, algorithms=[algorithm])
    except jwt.PyJWTError:
        return False
    return True


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtRejected(f"Jwt claim {name} is not a number")
    return float(value)


def _checked(rule: JwtRule, claims: Mapping[str, Any], now: float) -> RequestAuth:
    expires = _number(claims, "exp")
    if expires is not None and now > expires + CLOCK_SKEW_SECONDS:
        raise JwtRejected("Jwt is expired")
    not_before = _number(claims, "nbf")
    if not_before is not None and now + CLOCK_SKEW_SECONDS < not_before:
        raise JwtRejected("Jwt is not yet valid")
    aud = claims.get("aud")
    if isinstance(aud, str):
        audiences: tuple[str, ...] = (aud,)
    else:
        audiences = tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()
    if rule.audiences and rule.audiences.isdisjoint(audiences):
        raise JwtRejected("Audiences in Jwt are not allowed")
    subject = claims.get("sub")
    presenter = claims.get("azp")
    return RequestAuth(
        rule.issuer,
        f"{rule.issuer}/{subject if isinstance(subject, str) else ''}",
        audiences,
        presenter if isinstance(presenter, str) else "",
        claims,
        expires,
    )


# ---------------------------------------------------------------------------- compile


def _strings(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _get(obj, key, list, path, [])
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise PolicyRejected(f"{path}.{key}[{i}]", "expected a non-empty string")
    return tuple(items)


def _rule(spec: Mapping[str, Any], path: str) -> JwtRule:
    issuer = _get(spec, "issuer", str, path)
    if not issuer:
        raise PolicyRejected(f"{path}.issuer", "required")
    uri = _get(spec, "jwksUri", str, path, "")
    inline = _get(spec, "jwks", str, path)
    if bool(uri) == (inline is not None):
        raise PolicyRejected(path, "needs exactly one of jwksUri and jwks")
    keys = None
    if inline is not None:
        try:
            keys = parse_jwks(inline)
        except JwksError as exc:
            raise PolicyRejected(f"{path}.jwks", str(exc)) from None
    locations = []
    for p, entry in _dicts(spec, "fromHeaders", path):
        name = _get(entry, "name", str, p)
        if not name:
            raise PolicyRejected(f"{p}.name", "required")
        locations.append((name.lower().encode("ascii", "replace"), _get(entry, "prefix", str, p, "")))
    return JwtRule(
        issuer,
        frozenset(_strings(spec, "audiences", path)),
        uri,
        keys,
        tuple(locations) or (DEFAULT_LOCATION,),
        bool(_get(spec, "forwardOriginalToken", bool, path, False)),
    )


def compile_jwt_authn(policies: Iterable[Policy]) -> JwtAuthn:
    """The jwtRules of every RequestAuthentication among `policies`, in (namespace, name) order;
    PolicyRejected naming the field when one cannot be used."""
    indexed = [(i, p) for i, p in enumerate(policies) if p.kind == KIND]
    if not indexed:
        return NO_JWT_AUTHN
    rules: dict[str, list[JwtRule]] = {}
    locations: dict[bytes, list[str]] = {}
    for index, policy in sorted(indexed, key=lambda t: (t[1].namespace, t[1].name)):
        for path, spec in _dicts(policy.spec, "jwtRules", f"policies[{index}].spec"):
            rule = _rule(spec, path)
            rules.setdefault(rule.issuer, []).append(rule)
            for name, prefix in rule.locations:
                prefixes = locations.setdefault(name, [])
                if prefix not in prefixes:
                    prefixes.append(prefix)
    return JwtAuthn(
        {issuer: tuple(r) for issuer, r in rules.items()},
        {name: tuple(p) for name, p in locations.items()},
        frozenset(rule.jwks_uri for r in rules.values() for rule in r if rule.jwks_uri),
    )
