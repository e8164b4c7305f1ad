"""RequestAuthentication: the inbound chain's first filter, validating a JWT when the call has one.

The token is read from the headers the rules name (default `authorization: Bearer <token>`;
prefixes compare case-insensitively). No token: the call goes on without one (an
AuthorizationPolicy may still require one). A token that fails a check (`sidecar.jwt_authn`)
raises Unauthenticated (UNAUTHENTICATED) saying which, counted as `inbound.jwt_rejected`; so do
two different tokens on one call. A valid token's claims go on the call head (`head.auth`) for
AuthorizationPolicy, and its header is removed before the call reaches the app unless the rule
says `forwardOriginalToken: true`.

Per call: a scan of the headers, then a dict lookup: verified tokens are cached (bounded, for at
most `CACHE_SECONDS` and never past their `exp`), and an entry is used only while the key set it
was verified with is still the one in force. The JWKS itself is never fetched here
(`sidecar.jwks.JwksStore` keeps it fresh in the background).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.call import CallHead, Handler, Target
from sidecar.errors import Unauthenticated
from sidecar.jwks import JwksStore, KeySet
from sidecar.jwt_authn import CLOCK_SKEW_SECONDS, JwtAuthn, JwtRejected, JwtRule, RequestAuth, UnknownKey
from sidecar.stats import Stats

CACHE_SECONDS = 60.0
CACHE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class RequestAuthenticationConfig:
    jwt: JwtAuthn
    jwks: JwksStore
    stats: Stats
    clock: Callable[[], float] = time.time  # wall clock: exp and nbf are seconds since the epoch


@dataclass(frozen=True, slots=True)
class _Verified:
    auth: RequestAuth
    keys: tuple[KeySet | None, ...]  # the key sets in force when verified, one per rule
    until: float


class RequestAuthentication:
    def __init__(self, inner: Handler, config: RequestAuthenticationConfig) -> None:
        self.inner = inner
        self.jwt = config.jwt
        self.jwks = config.jwks
        self.stats = config.stats
        self.clock = config.clock
        self._locations = {
            name: tuple(p.lower() for p in prefixes) for name, prefixes in config.jwt.locations.items()
        }
        self._cache: dict[tuple[str, bytes], _Verified] = {}

    def __call__(self, head: CallHead) -> Target:
        found = self._token(head)
        if found is None:
            return self.inner(head)
        token, header = found
        try:
            verified = self._verified(token, header)
        except JwtRejected as exc:
            self.stats.incr("inbound.jwt_rejected")
            raise Unauthenticated(str(exc)) from None
        head.auth = verified.auth
        if not self.jwt.forwarded(verified.auth.issuer, header):
            head.headers = tuple(h for h in head.headers if h[0] != header)
        return self.inner(head)

    def _token(self, head: CallHead) -> tuple[str, bytes] | None:
        found: tuple[str, bytes] | None = None
        locations = self._locations
        for name, value, _ in head.headers:
            prefixes = locations.get(name)
            if prefixes is None:
                continue
            text = value.decode("ascii", "replace")
            for prefix in prefixes:
                if text[: len(prefix)].lower() == prefix:
                    token = text[len(prefix) :].strip()
                    if not token:
                        continue
                    if found is not None and found[0] != token:
                        self.stats.incr("inbound.jwt_rejected")
                        raise Unauthenticated("more than one Jwt in the request")
                    found = (token, name)
                    break
        return found

    def _keys(self, rule: JwtRule) -> KeySet | None:
        return rule.inline_keys if rule.inline_keys is not None else self.jwks.get(rule.jwks_uri)

    def _verified(self, token: str, header: bytes) -> _Verified:
        now = self.clock()
        key = (token, header)
        cached = self._cache.get(key)
        if cached is not None:
            rules = self.jwt.rules.get(cached.auth.issuer, ())
            if now < cached.until and cached.keys == tuple(self._keys(r) for r in rules):
                return cached
            del self._cache[key]
        try:
            auth = self.jwt.verify(token, header, self._keys, now)
        except UnknownKey as exc:
            for uri in exc.uris:
                self.jwks.request_refresh(uri)
            raise
        until = now + CACHE_SECONDS
        if auth.expires is not None:
            until = min(until, auth.expires + CLOCK_SKEW_SECONDS)
        keys = tuple(self._keys(r) for r in self.jwt.rules.get(auth.issuer, ()))
        verified = _Verified(auth, keys, until)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = verified
        return verified
