"""Join tokens: what a new sidecar shows the CA to get its first certificate.

A join token is an ES256 JWT signed with the control plane's API signing key (as API tokens are,
see control_plane.auth) for the audience ``grpc-mesh-join``, so an API token is never a join
token and a join token never opens the policy API. It names one workload — ``ns`` and ``sa``
claims, ``sub`` ``ns/<namespace>/sa/<service>`` — and the CA issues certificates for exactly
that identity, in its own trust domain. It is short-lived (1 h by default) and may be used by
several replicas of the workload while it lasts; after the first certificate a sidecar renews
with that certificate, not the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec

from control_plane.api_errors import Unauthenticated
from control_plane.auth import TokenVerifier, sign_token
from control_plane.spiffe import validate_segment

JOIN_AUDIENCE = "grpc-mesh-join"
DEFAULT_JOIN_TTL = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Workload:
    namespace: str
    service: str


def mint_join_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    namespace: str,
    service: str,
    now: datetime,
    ttl: timedelta = DEFAULT_JOIN_TTL,
) -> str:
    validate_segment(namespace, "namespace")
    validate_segment(service, "service")
    return sign_token(
        key,
        audience=JOIN_AUDIENCE,
        subject=f"ns/{namespace}/sa/{service}",
        now=now,
        ttl=ttl,
        ns=namespace,
        sa=service,
    )


def verify_join_token(verifier: TokenVerifier, authorization: str | None) -> Workload:
    """The workload a ``Bearer <join token>`` names; Unauthenticated saying why when it names none."""
    if not authorization:
        raise Unauthenticated(
            "no join token: send 'authorization: Bearer <token>' "
            "(meshctl token create --service S --namespace N), or renew with the current certificate"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization metadata must be 'Bearer <join token>'")
    claims = verifier.claims(token.strip(), JOIN_AUDIENCE)
    namespace, service = claims.get("ns"), claims.get("sa")
    if not isinstance(namespace, str) or not isinstance(service, str):
        raise Unauthenticated("join token: the ns and sa claims must be strings")
    try:
        validate_segment(namespace, "ns")
        validate_segment(service, "sa")
    except ValueError as exc:
        raise Unauthenticated(f"join token: {exc}") from None
    return Workload(namespace, service)
