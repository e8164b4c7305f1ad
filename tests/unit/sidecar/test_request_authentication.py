"""RequestAuthentication (sidecar.jwt_authn, sidecar.jwks, filters/request_authentication.py): a
token is valid only when signed (RS256/ES256) by a key of its issuer's JWKS, unexpired, for an
accepted audience; an invalid one is UNAUTHENTICATED; no token passes unless an
AuthorizationPolicy requires one; the claims reach AuthorizationPolicy `when` conditions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sidecar.authz import compile_authz
from sidecar.call import CallHead, Target
from sidecar.config import Policy
from sidecar.errors import PermissionDenied, Unauthenticated, status_for
from sidecar.filters.authorization import Authorization, AuthorizationConfig
from sidecar.filters.request_authentication import (
    CACHE_SECONDS,
    RequestAuthentication,
    RequestAuthenticationConfig,
)
from sidecar.grpc_wire import Code
from sidecar.jwks import JwksError, JwksStore, parse_jwks
from sidecar.jwt_authn import compile_jwt_authn
from sidecar.stats import Stats
from sidecar.traffic import PolicyRejected

ISSUER = "https://auth.example.com"
NOW = 1_800_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    entry: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    entry["kid"] = kid
    return entry


def jwks_text(*entries: dict[str, Any]) -> str:
    return json.dumps({"keys": list(entries)})


JWKS = jwks_text(jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1"))


def token(
    key: Any = RSA_KEY,
    kid: str | None = "rsa-1",
    algorithm: str = "RS256",
    **overrides: Any,
) -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "ada",
        "aud": "users",
        "exp": NOW + 300,
        "iat": NOW,
        "groups": ["admins", "staff"],
        "org": {"team": "platform"},
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def request_authn(name: str = "jwt", ns: str = "default", **rule: Any) -> Policy:
    spec_rule: dict[str, Any] = {"issuer": ISSUER, "jwks": JWKS, "audiences": ["users"]}
    spec_rule.update(rule)
    spec_rule = {k: v for k, v in spec_rule.items() if v is not None}
    return Policy("RequestAuthentication", ns, name, {"jwtRules": [spec_rule]})


def authz_policy(name: str, rules: list[dict[str, Any]], action: str = "ALLOW") -> Policy:
    return Policy("AuthorizationPolicy", "default", name, {"action": action, "rules": rules})


class App:
    """The inbound terminal: records what reached it."""

    def __init__(self) -> None:
        self.seen: list[CallHead] = []

    def __call__(self, head: CallHead) -> Target:
        self.seen.append(head)
        raise LookupError("forwarded")  # no real pool in a unit test


class Chain:
    """RequestAuthentication → Authorization → App, on a settable wall clock."""

    def __init__(self, policies: list[Policy], jwks: JwksStore | None = None) -> None:
        self.app = App()
        self.stats = Stats()
        self.now = NOW
        self.jwks = jwks if jwks is not None else JwksStore()
        authz = compile_authz(policies)
        handler: Callable[[CallHead], Target] = self.app
        if not authz.empty:
            handler = Authorization(handler, AuthorizationConfig(authz, self.stats))
        config = RequestAuthenticationConfig(
            compile_jwt_authn(policies), self.jwks, self.stats, lambda: self.now
        )
        self.handler = RequestAuthentication(handler, config)

    def call(self, *headers: tuple[str, str]) -> CallHead:
        """The call as the app saw it; raises the sidecar's error when it was refused."""
        head = CallHead(
            "/demo.v1.Users/GetUser",
            "users",
            tuple((k.encode(), v.encode(), False) for k, v in headers),
            None,
            None,
        )
        with pytest.raises(LookupError):
            self.handler(head)
        return self.app.seen[-1]

    def refused(self, *headers: tuple[str, str]) -> tuple[int, str]:
        head = CallHead(
            "/demo.v1.Users/GetUser",
            "users",
            tuple((k.encode(), v.encode(), False) for k, v in headers),
            None,
            None,
        )
        with pytest.raises((Unauthenticated, PermissionDenied)) as refused:
            self.handler(head)
        return status_for(refused.value)


def bearer(value: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {value}")


# ---------------------------------------------------------------------------- validity


@pytest.mark.parametrize(
    "make",
    [
        lambda: token(),
        lambda: token(EC_KEY, "ec-1", "ES256"),
        lambda: token(kid=None),  # no kid: every key for the algorithm is tried
        lambda: token(aud=["other", "users"]),
        lambda: token(exp=NOW - 30),  # within the 60 s of clock skew allowed
    ],
    ids=["rs256", "es256", "no-kid", "one-of-audiences", "clock-skew"],
)
def test_a_valid_token_reaches_the_app_with_its_claims(make: Callable[[], str]) -> None:
    chain = Chain([request_authn()])
    seen = chain.call(bearer(make()))
    assert seen.auth is not None
    assert seen.auth.principal == f"{ISSUER}/ada"
    assert seen.auth.claims["groups"] == ["admins", "staff"]
    assert not any(name == b"authorization" for name, _, _ in seen.headers)  # not forwarded
    assert chain.stats.counters == {}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: token(exp=NOW - 61), "Jwt is expired"),
        (lambda: token(nbf=NOW + 120), "Jwt is not yet valid"),
        (lambda: token(iss="https://evil.example.com"), "Jwt issuer is not configured"),
        (lambda: token(aud="orders"), "Audiences in Jwt are not allowed"),
        (lambda: token(aud=None), "Audiences in Jwt are not allowed"),
        (lambda: token(OTHER_KEY), "Jwt verification fails"),  # signed by a key not in the JWKS
        (lambda: token(OTHER_KEY, kid="rotated"), "Jwt verification fails: no key with kid 'rotated'"),
        (lambda: token()[:-4] + "AAAA", "Jwt verification fails"),  # signature tampered with
        (lambda: token(EC_KEY, "rsa-1", "ES256"), "Jwt verification fails: no key with kid 'rsa-1'"),
        (
            lambda: jwt.encode({"iss": ISSUER}, "s" * 32, algorithm="HS256"),
            "Jwt algorithm 'HS256' is not accepted",
        ),
        (lambda: "not-a-jwt", "Jwt is not in the JWS compact form"),
        (lambda: token(exp="tomorrow"), "Jwt claim exp is not a number"),
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-issuer",
        "wrong-audience",
        "no-audience",
        "bad-signature-other-key",
        "unknown-kid",
        "tampered",
        "key-of-another-algorithm",
        "hs256",
        "garbage",
        "exp-not-a-number",
    ],
)
def test_an_invalid_token_is_unauthenticated_and_never_forwarded(
    make: Callable[[], str], message: str
) -> None:
    chain = Chain([request_authn()])
    code, text = chain.refused(bearer(make()))
    assert code == Code.UNAUTHENTICATED
    assert message in text
    assert chain.app.seen == []
    assert chain.stats.counters == {"inbound.jwt_rejected": 1}


def test_audiences_are_not_checked_when_the_rule_lists_none() -> None:
    chain = Chain([request_authn(audiences=None)])
    assert chain.call(bearer(token(aud="anything"))).auth is not None
    assert chain.call(bearer(token(aud=None))).auth is not None


def test_a_cached_token_still_expires() -> None:
    chain = Chain([request_authn()])
    good = token(exp=NOW + 10)
    assert chain.call(bearer(good)).auth is not None
    chain.now = NOW + 10 + 61
    assert chain.refused(bearer(good)) == (Code.UNAUTHENTICATED, "Jwt is expired")
    chain.now = NOW
    long_lived = token(exp=NOW + 3600)
    assert chain.call(bearer(long_lived)).auth is not None
    chain.now = NOW + CACHE_SECONDS + 1  # the cache entry is gone; verified again, still valid
    assert chain.call(bearer(long_lived)).auth is not None


# ---------------------------------------------------------------------------- where tokens come from


def test_no_token_passes_without_claims() -> None:
    chain = Chain([request_authn()])
    assert chain.call().auth is None
    assert chain.call(("authorization", "Basic dXNlcjpwYXNz")).auth is None  # not a bearer token
    assert chain.stats.counters == {}


def test_the_bearer_prefix_is_case_insensitive() -> None:
    chain = Chain([request_authn()])
    assert chain.call(("authorization", f"bearer {token()}")).auth is not None


def test_from_headers_and_forward_original_token() -> None:
    chain = Chain([request_authn(fromHeaders=[{"name": "x-jwt", "prefix": ""}], forwardOriginalToken=True)])
    seen = chain.call(("x-jwt", token()))
    assert seen.auth is not None
    assert (b"x-jwt", token().encode(), False) in seen.headers  # forwarded as asked
    # Only the headers the rule names: a bearer token in authorization is not looked at.
    assert chain.call(bearer(token())).auth is None


def test_a_token_of_an_issuer_must_come_in_that_issuers_header() -> None:
    policies = [
        request_authn("a"),
        request_authn("b", issuer="https://other.example.com", fromHeaders=[{"name": "x-other"}]),
    ]
    chain = Chain(policies)
    assert chain.refused(("x-other", token()))[1] == (
        f"Jwt of issuer {ISSUER} is not accepted in header 'x-other'"
    )


def test_two_different_tokens_are_refused() -> None:
    chain = Chain(
        [request_authn(fromHeaders=[{"name": "authorization", "prefix": "Bearer "}, {"name": "x-jwt"}])]
    )
    code, message = chain.refused(bearer(token()), ("x-jwt", token(sub="eve")))
    assert (code, message) == (Code.UNAUTHENTICATED, "more than one Jwt in the request")
    assert chain.call(bearer(token()), ("x-jwt", token())).auth is not None  # the same one twice


# ---------------------------------------------------------------------------- with AuthorizationPolicy


REQUIRE_TOKEN = authz_policy("require-jwt", [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}], "DENY")


def test_no_token_is_denied_only_when_a_policy_requires_one() -> None:
    assert Chain([request_authn()]).call().auth is None
    chain = Chain([request_authn(), REQUIRE_TOKEN])
    assert chain.refused() == (
        Code.PERMISSION_DENIED,
        "RBAC: denied by AuthorizationPolicy default/require-jwt",
    )
    assert chain.call(bearer(token())).auth is not None
    # An invalid token is UNAUTHENTICATED, before authorization is asked.
    assert chain.refused(bearer(token(exp=NOW - 3600)))[0] == Code.UNAUTHENTICATED


def test_request_principals_and_claims_in_when() -> None:
    allow = authz_policy(
        "admins",
        [
            {
                "from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}],
                "when": [
                    {"key": "request.auth.claims[groups]", "values": ["admins"]},
                    {"key": "request.auth.claims[org][team]", "values": ["platform"]},
                    {"key": "request.auth.audiences", "values": ["users"]},
                    {"key": "request.auth.principal", "notValues": [f"{ISSUER}/eve"]},
                ],
            }
        ],
    )
    chain = Chain([request_authn(), allow])
    assert chain.call(bearer(token())).auth is not None
    for refused in (
        token(groups=["staff"]),  # not in the admins group
        token(groups="staff"),
        token(org={"team": "sales"}),
        token(org="platform"),  # not a nested claim
        token(sub="eve"),
    ):
        code, message = chain.refused(bearer(refused))
        assert (code, message) == (
            Code.PERMISSION_DENIED,
            "RBAC: denied: no ALLOW policy matched (AuthorizationPolicy default/admins)",
        )
    assert chain.refused()[0] == Code.PERMISSION_DENIED  # no token: no claims
    assert chain.call(bearer(token(groups="admins"))).auth is not None  # a string claim


# ---------------------------------------------------------------------------- compile


@pytest.mark.parametrize(
    ("rule", "path", "reason"),
    [
        ({"issuer": None}, "policies[0].spec.jwtRules[0].issuer", "required"),
        ({"jwks": None}, "policies[0].spec.jwtRules[0]", "needs exactly one of jwksUri and jwks"),
        (
            {"jwksUri": "file:///x.json"},
            "policies[0].spec.jwtRules[0]",
            "needs exactly one of jwksUri and jwks",
        ),
        (
            {"jwks": "{}"},
            "policies[0].spec.jwtRules[0].jwks",
            'not a JSON Web Key Set: an object with a non-empty "keys" list',
        ),
        (
            {"jwks": jwks_text({"kty": "oct", "k": "c2VjcmV0"})},
            "policies[0].spec.jwtRules[0].jwks",
            "has no key for RS256 (RSA) or ES256 (EC P-256) signatures",
        ),
        ({"audiences": [""]}, "policies[0].spec.jwtRules[0].audiences[0]", "expected a non-empty string"),
        ({"fromHeaders": [{"prefix": "x"}]}, "policies[0].spec.jwtRules[0].fromHeaders[0].name", "required"),
    ],
)
def test_a_rule_the_sidecar_cannot_use_is_rejected(rule: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(PolicyRejected) as rejected:
        compile_jwt_authn([request_authn(**rule)])
    assert (rejected.value.path, rejected.value.reason) == (path, reason)


def test_parse_jwks_keeps_only_signature_keys_for_rs256_and_es256() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    encryption = jwk(RSA_KEY, "enc") | {"use": "enc"}
    keys = parse_jwks(jwks_text(jwk(RSA_KEY, "a"), jwk(p384, "b"), encryption, {"kty": "oct", "k": "eA"}))
    assert set(keys.by_kid) == {"a"}
    with pytest.raises(JwksError):
        parse_jwks("[1]")


# ---------------------------------------------------------------------------- JWKS from files and URLs


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_jwks_from_a_file_is_in_force_at_apply_and_reread(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(jwks_text(jwk(RSA_KEY, "rsa-1")))
    uri = path.as_uri()

    async def scenario() -> None:
        store = JwksStore(refresh=0.05)
        try:
            policies = [request_authn(jwks=None, jwksUri=uri)]
            authn = compile_jwt_authn(policies)
            assert authn.uris == {uri}
            store.track(authn.uris)
            chain = Chain(policies, store)
            assert chain.call(bearer(token())).auth is not None  # no wait: read at track
            path.write_text(jwks_text(jwk(OTHER_KEY, "rsa-2")))  # the issuer rotates its key
            await eventually(lambda: "rsa-2" in (store.get(uri) or parse_jwks(JWKS)).by_kid, "the re-read")
            assert chain.call(bearer(token(OTHER_KEY, "rsa-2"))).auth is not None
            # Verified with a key no longer in the set: the cached result is not used.
            assert chain.refused(bearer(token()))[0] == Code.UNAUTHENTICATED
        finally:
            await store.close()

    run(scenario)


def test_jwks_from_a_url_is_fetched_refreshed_and_kept_when_the_server_fails() -> None:
    served = {"body": jwks_text(jwk(RSA_KEY, "rsa-1")), "status": 200, "hits": 0}

    async def handler(request: web.Request) -> web.Response:
        served["hits"] += 1
        return web.Response(
            text=str(served["body"]), status=int(served["status"]), content_type="application/json"
        )

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        uri = f"http://127.0.0.1:{port}/jwks.json"
        store = JwksStore(refresh=3600, retry=(0.01, 0.02), min_refetch=0)
        try:
            policies = [request_authn(jwks=None, jwksUri=uri)]
            chain = Chain(policies, store)
            code, message = chain.refused(bearer(token()))  # not fetched yet
            assert (code, message) == (Code.UNAUTHENTICATED, f"Jwks of issuer {ISSUER} is not available")
            store.track(compile_jwt_authn(policies).uris)
            await eventually(lambda: store.get(uri) is not None, "the first fetch")
            assert chain.call(bearer(token())).auth is not None
            # The issuer rotates: a token with an unknown kid asks for an early refetch.
            served["body"] = jwks_text(jwk(RSA_KEY, "rsa-1"), jwk(OTHER_KEY, "rsa-2"))
            assert chain.refused(bearer(token(OTHER_KEY, "rsa-2")))[0] == Code.UNAUTHENTICATED
            await eventually(lambda: "rsa-2" in (store.get(uri) or parse_jwks(JWKS)).by_kid, "the refetch")
            assert chain.call(bearer(token(OTHER_KEY, "rsa-2"))).auth is not None
            # The server fails: the last good keys stay in force, the error is kept.
            served["status"] = 500
            hits = served["hits"]
            store.request_refresh(uri)
            await eventually(lambda: served["hits"] >= hits + 2 and uri in store.errors, "failed refetches")
            assert store.errors[uri] == "HTTP 500"
            assert chain.call(bearer(token())).auth is not None
            store.track(())  # no longer named by any policy: forgotten
            assert store.get(uri) is None
        finally:
            await store.close()
            await runner.cleanup()

    run(scenario)
