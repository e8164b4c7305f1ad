"""Who is on a discovery stream: the identity a sidecar proves with its certificate.

A Hello may carry an IdentityProof: the sidecar's SVID and a signature with its key over the time
and its node id (control_plane.possession). A valid proof makes the registered identity the
certificate's SPIFFE ID, and the Hello's service and namespace must be the ones that ID names (a
sidecar cannot register as an endpoint of a service it has no certificate for). Without a proof
the identity is only claimed: accepted unless the control plane requires proofs
(``--require-identity``), and shown as unverified in ``meshctl status``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from mesh.v1 import discovery_pb2

from control_plane.api_errors import PermissionDenied
from control_plane.ca_source import Trust
from control_plane.possession import DISCOVERY, check_proof
from control_plane.spiffe import SpiffeId


@dataclass(frozen=True, slots=True)
class ProvenIdentity:
    spiffe_id: SpiffeId
    serial: str  # hex
    not_after: datetime


def proven(spiffe_id: SpiffeId, leaf: x509.Certificate) -> ProvenIdentity:
    return ProvenIdentity(spiffe_id, format(leaf.serial_number, "x"), leaf.not_valid_after_utc)


class DiscoveryAuthenticator:
    def __init__(self, trust: Callable[[], Trust], trust_domain: str, clock: Callable[[], datetime]) -> None:
        self._trust = trust
        self.trust_domain = trust_domain
        self._clock = clock

    def verify(self, proof: discovery_pb2.IdentityProof, node_id: str) -> ProvenIdentity:
        """The identity `proof` proves for `node_id`; ApiError (Unauthenticated, PermissionDenied)."""
        identity, leaf = check_proof(
            proof.certificate_chain,
            proof.unix_time,
            proof.signature,
            purpose=DISCOVERY,
            payload=node_id.encode(),
            roots=self._trust().roots,
            trust_domain=self.trust_domain,
            now=self._clock(),
            what="identity proof",
        )
        return proven(identity, leaf)

    def verify_hello(self, hello: discovery_pb2.Hello) -> ProvenIdentity:
        """Verify a Hello's proof and that the Hello claims what the certificate names."""
        identity = self.verify(hello.proof, hello.node_id)
        namespace = hello.namespace or "default"
        named = identity.spiffe_id
        if (named.namespace, named.service) != (namespace, hello.service) or (
            hello.identity and hello.identity != str(named)
        ):
            raise PermissionDenied(
                f"the certificate names {named}; the Hello says service {hello.service!r} in namespace "
                f"{namespace!r}" + (f" with identity {hello.identity!r}" if hello.identity else "")
            )
        return identity
