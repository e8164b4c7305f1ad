"""The inbound port speaks only mutual TLS with a certificate from the mesh CA.

Each refusal is checked beside a control: the same probe with the right credentials gets an
HTTP/2 answer, so a refusal is the sidecar's doing, not a broken probe.
"""

from __future__ import annotations

import ssl

import grpc
import pytest

from control_plane.ca import WorkloadFiles
from tests.support import h2_client
from tests.support.clients import ECHO, channel
from tests.support.mesh import Mesh, http_get

pytestmark = pytest.mark.integration


def tls_client(ca: WorkloadFiles, cert: WorkloadFiles | None, *, alpn: bool = True) -> ssl.SSLContext:
    """A TLS 1.3 client context trusting the mesh CA (so the server's certificate verifies),
    presenting `cert` when given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.ca))
    ctx.check_hostname = False  # sidecar certificates name a SPIFFE ID, not a host
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if alpn:
        ctx.set_alpn_protocols(["h2"])
    return ctx


def inbound(mesh: Mesh) -> str:
    return mesh.workloads["echo"].inbound


def assert_still_serving(mesh: Mesh) -> None:
    assert http_get(mesh.workloads["echo"].admin, "/ready")[0] == 200
    with channel(mesh.outbound) as ch:
        assert ch.unary_unary(ECHO + "Unary")(b"still fine", timeout=10) == b"still fine"


def test_mesh_client_certificate_is_accepted(mesh: Mesh) -> None:
    """The control for the refusals below."""
    assert h2_client.speaks_h2(inbound(mesh), tls_client(mesh.client_tls, mesh.client_tls))


def test_plaintext_client_is_refused_at_the_inbound_port(mesh: Mesh) -> None:
    assert h2_client.speaks_h2(mesh.outbound)  # the probe works on a plaintext HTTP/2 listener
    assert not h2_client.speaks_h2(inbound(mesh))
    with channel(inbound(mesh)) as ch, pytest.raises(grpc.RpcError) as error:
        ch.unary_unary(ECHO + "Unary")(b"plaintext", timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert_still_serving(mesh)


def test_client_certificate_from_another_ca_is_refused(mesh: Mesh) -> None:
    # Same trust domain, same kind of SPIFFE ID, but signed by a CA the mesh does not trust.
    assert not h2_client.speaks_h2(inbound(mesh), tls_client(mesh.client_tls, mesh.foreign_tls))
    assert_still_serving(mesh)


def test_tls_client_without_a_certificate_is_refused(mesh: Mesh) -> None:
    assert not h2_client.speaks_h2(inbound(mesh), tls_client(mesh.client_tls, None))
    assert_still_serving(mesh)


def test_tls_client_that_does_not_offer_h2_is_refused(mesh: Mesh) -> None:
    assert not h2_client.speaks_h2(inbound(mesh), tls_client(mesh.client_tls, mesh.client_tls, alpn=False))
    assert_still_serving(mesh)
