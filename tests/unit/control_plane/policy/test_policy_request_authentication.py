"""RequestAuthentication: JWT rules (issuer, audiences, JWKS by URI or inline, where the token is)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.policy import validate
from tests.support.policy_docs import DELETE, check_error, doc, edit

JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "BBBB", "kid": "k1"}]})

SPEC: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "users"}},
    "jwtRules": [
        {
            "issuer": "https://auth.example.com",
            "audiences": ["users", "orders"],
            "jwksUri": "https://auth.example.com/.well-known/jwks.json",
            "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}, {"name": "x-jwt"}],
            "forwardOriginalToken": True,
        },
        {"issuer": "mesh-tests", "jwks": JWKS},
        {"issuer": "local-file", "jwksUri": "file:///etc/mesh/jwks.json"},
    ],
}

BASE = doc("RequestAuthentication", SPEC)
RULE = "spec.jwtRules[0]"


def test_jwt_rules_are_valid() -> None:
    assert validate(BASE).spec == SPEC


BAD: list[tuple[str, Any, str, str]] = [
    ("spec.jwtRules", DELETE, "spec.jwtRules", "=required"),
    ("spec.jwtRules", [], "spec.jwtRules", "must not be empty"),
    (f"{RULE}.issuer", DELETE, f"{RULE}.issuer", "=required"),
    (f"{RULE}.issuer", "", f"{RULE}.issuer", "must not be empty"),
    (
        "spec.jwtRules[1].issuer",
        "https://auth.example.com",
        "spec.jwtRules[1].issuer",
        "already has a rule ([0])",
    ),
    (f"{RULE}.audiences", [], f"{RULE}.audiences", "omit audiences instead"),
    (f"{RULE}.audiences", "users", f"{RULE}.audiences", "must be a list"),
    (f"{RULE}.audiences", ["users", "users"], f"{RULE}.audiences[1]", "listed twice"),
    (f"{RULE}.jwksUri", DELETE, RULE, "needs one of jwksUri or jwks"),
    (f"{RULE}.jwks", JWKS, RULE, "jwksUri and jwks cannot be used together"),
    (f"{RULE}.jwksUri", "ftp://auth.example.com/jwks", f"{RULE}.jwksUri", "https://, http:// or file://"),
    (f"{RULE}.jwksUri", "jwks.json", f"{RULE}.jwksUri", "https://, http:// or file://"),
    (f"{RULE}.jwksUri", "https:///jwks.json", f"{RULE}.jwksUri", "has no host"),
    (f"{RULE}.jwksUri", "file://jwks.json", f"{RULE}.jwksUri", "absolute path"),
    (f"{RULE}.jwksUri", "http://[::1", f"{RULE}.jwksUri", "is not a URL"),
    (
        "spec.jwtRules[1].jwks",
        "{keys: []}",
        "spec.jwtRules[1].jwks",
        "is not valid JSON: Expecting property name",
    ),
    (
        "spec.jwtRules[1].jwks",
        "[]",
        "spec.jwtRules[1].jwks",
        'must be a JSON Web Key Set: an object with a non-empty "keys"',
    ),
    ("spec.jwtRules[1].jwks", '{"keys": []}', "spec.jwtRules[1].jwks", "must be a JSON Web Key Set"),
    (
        "spec.jwtRules[1].jwks",
        '{"keys": [{"kid": "a"}]}',
        "spec.jwtRules[1].jwks",
        "keys[0] is not a JSON Web Key",
    ),
    ("spec.jwtRules[1].jwks", '{"keys": [{"kty": "oct"}]}', "spec.jwtRules[1].jwks", "has no RSA or EC key"),
    ("spec.jwtRules[1].jwks", "[" * 100_000, "spec.jwtRules[1].jwks", "nested too deeply"),
    ("spec.jwtRules[1].jwks", {"keys": []}, "spec.jwtRules[1].jwks", "must be a string, got a mapping"),
    (f"{RULE}.fromHeaders", [], f"{RULE}.fromHeaders", "must not be empty"),
    (f"{RULE}.fromHeaders[0].name", DELETE, f"{RULE}.fromHeaders[0].name", "=required"),
    (f"{RULE}.fromHeaders[0].name", "Authorization", f"{RULE}.fromHeaders[0].name", "must be lower-case"),
    (f"{RULE}.fromHeaders[0].prefix", 1, f"{RULE}.fromHeaders[0].prefix", "must be a string"),
    (f"{RULE}.fromParams", ["token"], f"{RULE}.fromParams", "tokens are read from headers"),
    (f"{RULE}.fromCookies", ["token"], f"{RULE}.fromCookies", "field not supported"),
    (f"{RULE}.outputPayloadToHeader", "x-payload", f"{RULE}.outputPayloadToHeader", "field not supported"),
    (f"{RULE}.timeout", "5s", f"{RULE}.timeout", "field not supported"),
    (f"{RULE}.forwardOriginalToken", "yes", f"{RULE}.forwardOriginalToken", "must be true or false"),
    ("spec.selector", {"matchLabels": {"app": 1}}, "spec.selector.matchLabels.app", "must be a string"),
]


@pytest.mark.parametrize(
    ("field", "value", "path", "reason"), BAD, ids=[f"{c[0]}={c[1]!r}"[:80] for c in BAD]
)
def test_invalid(field: str, value: Any, path: str, reason: str) -> None:
    check_error(edit(BASE, field, value), path, reason, label="RequestAuthentication users")
