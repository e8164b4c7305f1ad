"""RequestAuthentication: the JWTs a workload's sidecar validates on inbound calls.

```yaml
spec:
  selector: {matchLabels: {app: orders}}   # optional; without it, the whole namespace
  jwtRules:
  - issuer: https://auth.example.com
    audiences: [orders]                     # optional; when given, the token needs one of them
    jwksUri: https://auth.example.com/jwks.json   # https://, http:// or file:///abs/path; or
    # jwks: '{"keys": [...]}'               # an inline JSON Web Key Set (exactly one of the two)
    fromHeaders: [{name: authorization, prefix: "Bearer "}]
    forwardOriginalToken: true
```

One rule per issuer. A token is validated against the rule of its issuer; a call without a token
is let through unless an AuthorizationPolicy requires one (Istio's semantics, enforced by the
sidecar).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from control_plane.policy.fields import (
    Invalid,
    any_string,
    boolean,
    child,
    fields,
    header_name,
    item,
    list_of,
    quoted,
    selector,
    string,
)

JWKS_URI_SCHEMES = ("https", "http", "file")
USABLE_KEY_TYPES = ("RSA", "EC")  # RS256 / ES256


def _jwks_uri(value: object, path: str) -> str:
    text = string(value, path)
    try:
        parts = urlsplit(text)
    except ValueError as err:
        raise Invalid(path, f"{quoted(text)} is not a URL: {err}") from None
    if parts.scheme not in JWKS_URI_SCHEMES:
        raise Invalid(path, f"{quoted(text)} must be an https://, http:// or file:// URL")
    if parts.scheme in ("https", "http") and not parts.hostname:
        raise Invalid(path, f"{quoted(text)} has no host")
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise Invalid(path, f"{quoted(text)} must name an absolute path: file:///path/to/jwks.json")
    return text


def _jwks(value: object, path: str) -> str:
    text = string(value, path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise Invalid(
            path, f"is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except RecursionError:
        raise Invalid(path, "is not a JSON Web Key Set: nested too deeply") from None
    keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise Invalid(path, 'must be a JSON Web Key Set: an object with a non-empty "keys" list')
    for index, key in enumerate(keys):
        if not isinstance(key, Mapping) or not isinstance(key.get("kty"), str):
            raise Invalid(path, f'keys[{index}] is not a JSON Web Key (an object with a "kty")')
    if not any(key["kty"] in USABLE_KEY_TYPES for key in keys):
        raise Invalid(path, "has no RSA or EC key; tokens are verified with RS256 or ES256")
    return text


def _from_header(value: object, path: str) -> dict[str, Any]:
    return fields(value, path, {"name": header_name, "prefix": any_string}, required=("name",))


def _jwt_rule(value: object, path: str) -> dict[str, Any]:
    unsupported_location = "tokens are read from headers (fromHeaders)"
    return fields(
        value,
        path,
        {
            "issuer": string,
            "audiences": list_of(string, min_items=1, unique=True, empty_hint="omit audiences instead"),
            "jwksUri": _jwks_uri,
            "jwks": _jwks,
            "fromHeaders": list_of(_from_header, min_items=1, empty_hint="omit fromHeaders instead"),
            "forwardOriginalToken": boolean,
        },
        required=("issuer",),
        exactly_one=[("jwksUri", "jwks")],
        hints={
            "fromParams": unsupported_location,
            "fromCookies": unsupported_location,
            "outputPayloadToHeader": "claims are available to AuthorizationPolicy when conditions",
            "outputClaimToHeaders": "claims are available to AuthorizationPolicy when conditions",
        },
    )


def _jwt_rules(value: object, path: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = list_of(_jwt_rule, min_items=1)(value, path)
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        issuer = rule["issuer"]
        if issuer in seen:
            raise Invalid(
                child(item(path, index), "issuer"),
                f"issuer {quoted(issuer)} already has a rule ([{seen[issuer]}])",
            )
        seen[issuer] = index
    return rules


def validate_spec(value: object, path: str = "spec") -> dict[str, Any]:
    """The canonical RequestAuthentication spec, or Invalid naming the first problem."""
    return fields(
        value,
        path,
        {"selector": selector, "jwtRules": _jwt_rules},
        required=("jwtRules",),
        hints={
            "targetRef": "select workloads with selector.matchLabels",
            "targetRefs": "select workloads with selector.matchLabels",
        },
    )
