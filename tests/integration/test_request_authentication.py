"""RequestAuthentication end to end with real processes: a control plane, the echo app behind its
sidecar and a client sidecar. The echo sidecar validates JWTs against a JWKS file named by
`jwksUri` and an AuthorizationPolicy admits only tokens of the issuer whose `groups` claim holds
`admins`: such a call reaches the app; an expired or foreign-signed token is UNAUTHENTICATED; a
call without a token, or with a valid token lacking the claim, is PERMISSION_DENIED."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.clients import ECHO, channel
from tests.support.control_plane_mesh import (
    NAMESPACE,
    TRUST_DOMAIN,
    ControlPlaneProcess,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    start_sidecars,
    wait_all_ready,
    wait_for_endpoints,
)
from tests.support.mesh import http_get

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
ISSUER = "https://auth.example.com"


def policies(jwks_uri: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "echo-jwt", "namespace": NAMESPACE},
            "spec": {"jwtRules": [{"issuer": ISSUER, "audiences": ["echo"], "jwksUri": jwks_uri}]},
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "echo-admins", "namespace": NAMESPACE},
            "spec": {
                "rules": [
                    {
                        "from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}],
                        "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}],
                    }
                ]
            },
        },
    ]


def test_jwt_validated_and_its_claims_authorize(tmp_path: Path) -> None:
    root = tmp_path
    key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    public: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public | {"kid": "k1"}]}))

    def token(signer: Any = key, **claims: Any) -> str:
        now = time.time()
        body = {"iss": ISSUER, "sub": "ada", "aud": "echo", "exp": now + 600, "groups": ["admins"]}
        return jwt.encode(body | claims, signer, algorithm="ES256", headers={"kid": "k1"})

    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [SidecarSpec("echo", app_kind="echo"), SidecarSpec("client", dependencies=["echo"])]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            server, client = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready([server, client], TIMEOUT)
            wait_for_endpoints(client, "echo", TIMEOUT)
            path = root / "policy.yaml"
            path.write_text(yaml.safe_dump_all(policies(jwks.as_uri()), sort_keys=False))
            control_plane.ok("apply", "-f", str(path), "--wait", "--timeout", "30s")
            assert server.config_dump()["jwks"] == {jwks.as_uri(): {"keys": True, "error": None}}

            with channel(client.outbound) as ch:
                unary = ch.unary_unary(ECHO + "Unary")

                def status_of(*metadata: tuple[str, str]) -> tuple[grpc.StatusCode, str]:
                    try:
                        assert unary(b"hi", metadata=metadata, timeout=5) == b"hi"
                    except grpc.RpcError as exc:
                        return exc.code(), exc.details()  # type: ignore[attr-defined]
                    return grpc.StatusCode.OK, ""

                def bearer(value: str) -> tuple[str, str]:
                    return ("authorization", f"Bearer {value}")

                assert status_of(bearer(token())) == (grpc.StatusCode.OK, "")
                assert status_of(bearer(token(exp=time.time() - 3600))) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "Jwt is expired",
                )
                assert status_of(bearer(token(other_key))) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "Jwt verification fails",
                )
                assert status_of(bearer(token(aud="orders"))) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "Audiences in Jwt are not allowed",
                )
                denied = "RBAC: denied: no ALLOW policy matched (AuthorizationPolicy default/echo-admins)"
                assert status_of() == (grpc.StatusCode.PERMISSION_DENIED, denied)
                assert status_of(bearer(token(groups=["staff"]))) == (
                    grpc.StatusCode.PERMISSION_DENIED,
                    denied,
                )

            status, body = http_get(server.admin, "/stats")
            assert status == 200, body
            stats = json.loads(body)
            assert stats["counters"]["inbound.jwt_rejected"] == 3
            assert stats["counters"]["inbound.authz_denied"] == 2
            assert stats["calls"]["inbound"]["echo"]["total"] == 1  # only the admin's call
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        codes = group.stop_all()
        check_exit_codes(codes)
