"""The CA API (mesh.v1.CertificateService) on a control plane started in-process on loopback:
every CSR flow, the SAN rule, what is counted, and an intermediate signed by an outside root."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mesh.v1 import ca_pb2, ca_pb2_grpc

from control_plane.auth import Role, load_signing_key, mint_token
from control_plane.ca import CertificateAuthority
from control_plane.join_tokens import mint_join_token
from control_plane.pki import build_csr, generate_private_key
from control_plane.server import ControlPlane
from control_plane.spiffe import SpiffeId
from control_plane.svid import validate_svid
from sidecar.ca_client import Issued, fetch_certificate
from tests.unit.control_plane.test_ca import make_external_pki, write_intermediate_dir

USERS = SpiffeId("cluster.local", "default", "users")
ORDERS = SpiffeId("cluster.local", "default", "orders")


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class CA:
    plane: ControlPlane
    stub: ca_pb2_grpc.CertificateServiceStub
    clock: Clock
    http: str
    grpc: str

    def token(self, service: str = "users", *, ttl: timedelta = timedelta(minutes=10)) -> str:
        key = load_signing_key(self.plane.data_dir)
        return mint_join_token(key, namespace="default", service=service, now=self.clock.now, ttl=ttl)

    async def metrics(self) -> str:
        def get() -> str:
            with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10) as reply:
                return str(reply.read().decode())

        return await asyncio.to_thread(get)  # the server runs on this loop


@asynccontextmanager
async def running_ca(data_dir: Path, **options: Any) -> AsyncIterator[CA]:
    clock = Clock(datetime.now(UTC))
    plane = ControlPlane(
        data_dir, grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", warmup=0.0, clock=clock, **options
    )
    addresses = await plane.start()
    try:
        async with grpc.aio.insecure_channel(addresses.grpc) as channel:
            yield CA(
                plane, ca_pb2_grpc.CertificateServiceStub(channel), clock, addresses.http, addresses.grpc
            )
    finally:
        await plane.stop(0)


def run(tmp_path: Path, body: Callable[[CA], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with running_ca(tmp_path / "data", **options) as ca:
            await body(ca)

    asyncio.run(main())


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), str(info.value.details())


def signed(ca: CA) -> int:
    assert ca.plane.issuer is not None
    return ca.plane.issuer.signed


def test_a_good_join_token_gets_an_svid_for_its_workload_leaf_to_root(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        assert issued.spiffe_id == USERS
        assert len(issued.chain) == 2 and issued.chain[-1] == issued.roots[0]  # leaf → root
        assert validate_svid(list(issued.chain), list(issued.roots), ca.clock.now) == USERS
        lifetime = issued.leaf.not_valid_after_utc - ca.clock.now
        assert timedelta(hours=23, minutes=59) < lifetime <= timedelta(hours=24)
        assert signed(ca) == 1
        assert "grpc_mesh_ca_csrs_signed_total 1.0" in await ca.metrics()

    run(tmp_path, body)


def test_no_token_bad_token_expired_token_and_api_token_get_nothing(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        csr = build_csr(generate_private_key(), USERS).decode()
        request = ca_pb2.CreateCertificateRequest(csr=csr)

        def bearer(token: str) -> list[tuple[str, str]]:
            return [("authorization", f"Bearer {token}")]

        code, details = await refused(ca.stub.CreateCertificate(request))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "no join token" in details
        code, details = await refused(ca.stub.CreateCertificate(request, metadata=bearer("not.a.jwt")))
        assert code is grpc.StatusCode.UNAUTHENTICATED
        expired = ca.token(ttl=timedelta(minutes=1))
        ca.clock.now += timedelta(minutes=2)
        code, details = await refused(ca.stub.CreateCertificate(request, metadata=bearer(expired)))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "expired" in details
        other_key = ec.generate_private_key(ec.SECP256R1())
        forged = mint_join_token(other_key, namespace="default", service="users", now=ca.clock.now)
        code, details = await refused(ca.stub.CreateCertificate(request, metadata=bearer(forged)))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "signature" in details
        api = mint_token(
            load_signing_key(ca.plane.data_dir), role=Role.ADMIN, subject="ops", now=ca.clock.now
        )
        code, details = await refused(ca.stub.CreateCertificate(request, metadata=bearer(api)))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "Audience" in details
        code, details = await refused(
            ca.stub.CreateCertificate(
                ca_pb2.CreateCertificateRequest(csr="junk"), metadata=bearer(ca.token())
            )
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "CSR" in details
        assert signed(ca) == 0
        text = await ca.metrics()
        assert 'grpc_mesh_ca_csrs_refused_total{grpc_code="UNAUTHENTICATED"} 5.0' in text
        assert 'grpc_mesh_ca_csrs_refused_total{grpc_code="INVALID_ARGUMENT"} 1.0' in text

    run(tmp_path, body)


def test_a_token_for_users_asking_for_orders_gets_users(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token("users"), hint=ORDERS)
        assert issued.spiffe_id == USERS

    run(tmp_path, body)


def test_renewal_with_the_current_certificate(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        first = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        ca.clock.now += timedelta(hours=12)  # the join token is long expired
        renewed = await fetch_certificate(ca.stub, now=ca.clock.now, current=first)
        assert renewed.spiffe_id == USERS
        assert renewed.key is not first.key and renewed.leaf.serial_number != first.leaf.serial_number
        assert renewed.leaf.not_valid_after_utc > first.leaf.not_valid_after_utc
        assert signed(ca) == 2

    run(tmp_path, body)


def _forge(current: Issued, **changes: Any) -> Issued:
    fields = {f: getattr(current, f) for f in ("key", "chain", "roots", "spiffe_id", "obtained")}
    fields.update(changes)
    return Issued(**fields)


def test_renewal_refusals(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        first = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        # Proof signed by a key that is not the certificate's.
        wrong_key = _forge(first, key=generate_private_key())
        code, details = await refused(fetch_certificate(ca.stub, now=ca.clock.now, current=wrong_key))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "signature does not verify" in details
        # A certificate from another root, however well formed.
        other = CertificateAuthority.create("cluster.local", now=ca.clock.now)
        key = generate_private_key()
        foreign = other.sign_csr(build_csr(key, ORDERS), ORDERS, timedelta(hours=1), ca.clock.now)
        stranger = Issued(key, (foreign.certificate,), tuple(other.roots), ORDERS, ca.clock.now)
        code, details = await refused(fetch_certificate(ca.stub, now=ca.clock.now, current=stranger))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "trusted root" in details
        # A clock far off: the proof is stale.
        code, details = await refused(
            fetch_certificate(ca.stub, now=ca.clock.now - timedelta(minutes=10), current=first)
        )
        assert code is grpc.StatusCode.UNAUTHENTICATED and "unix_time" in details
        # An expired certificate renews nothing.
        ca.clock.now += timedelta(hours=25)
        code, details = await refused(fetch_certificate(ca.stub, now=ca.clock.now, current=first))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "expired" in details
        assert signed(ca) == 1

    run(tmp_path, body)


def test_configured_lifetime(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        assert issued.leaf.not_valid_after_utc - ca.clock.now <= timedelta(seconds=60)

    run(tmp_path, body, cert_ttl=timedelta(seconds=60))


def test_an_intermediate_signed_by_an_outside_root(tmp_path: Path) -> None:
    pki = make_external_pki(datetime.now(UTC))
    ca_dir = write_intermediate_dir(pki, tmp_path / "corp-ca")

    async def body(ca: CA) -> None:
        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        assert issued.chain[1:] == (pki.intermediate, pki.root)  # leaf → intermediate → root
        assert issued.roots == (pki.root,)
        assert validate_svid([issued.leaf, pki.intermediate], [pki.root], ca.clock.now) == USERS
        renewed = await fetch_certificate(ca.stub, now=ca.clock.now, current=issued)
        assert renewed.spiffe_id == USERS

    run(tmp_path, body, ca_dir=ca_dir, trust_domain="cluster.local")
