"""Peer authentication: which mTLS mode the inbound listener enforces, from the pushed
PeerAuthentications.

`compile_peer_authentication(policies)` picks the one policy that governs this workload, Istio's
way: the most specific wins — a policy with a `selector` in the workload's own namespace, then
one without a selector there, then one in the mesh-wide namespace `mesh-system` (with a selector,
then without); among policies of the same rank the first by name. The control plane sends a
sidecar only the policies of its namespace and of `mesh-system` whose selector matches it, so any
other namespace is the workload's own. No policy: STRICT.

A mode other than STRICT or PERMISSIVE raises `PolicyRejected` naming the field; discovery NACKs
and keeps the last good snapshot. docs/authorization.md explains the modes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.config import Policy
from sidecar.traffic import PolicyRejected, _get

KIND = "PeerAuthentication"
MESH_NAMESPACE = "mesh-system"
STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
MODES = (STRICT, PERMISSIVE)


@dataclass(frozen=True, slots=True)
class PeerAuthn:
    """The mode in force and the policy that set it ("" when none did: the STRICT default)."""

    mode: str = STRICT
    policy: str = ""

    @property
    def plaintext_allowed(self) -> bool:
        return self.mode == PERMISSIVE


DEFAULT_PEER_AUTHN = PeerAuthn()


def compile_peer_authentication(policies: Iterable[Policy]) -> PeerAuthn:
    """The mode in force. Every PeerAuthentication's mode is checked, not only the winner's, so a
    bad one is refused whichever policy wins today."""
    ranked: list[tuple[int, str, PeerAuthn]] = []
    for index, policy in enumerate(policies):
        if policy.kind != KIND:
            continue
        path = f"policies[{index}].spec"
        mtls = _get(policy.spec, "mtls", dict, path)
        if mtls is None:
            raise PolicyRejected(f"{path}.mtls", "required: {mode: STRICT} or {mode: PERMISSIVE}")
        mode = _get(mtls, "mode", str, f"{path}.mtls")
        if mode not in MODES:
            raise PolicyRejected(f"{path}.mtls.mode", f"{mode!r} is not one of {', '.join(MODES)}")
        own = policy.namespace != MESH_NAMESPACE
        selected = isinstance(policy.spec.get("selector"), dict)
        rank = (0 if own else 2) + (0 if selected else 1)
        ranked.append((rank, policy.name, PeerAuthn(mode, f"{policy.namespace}/{policy.name}")))
    if not ranked:
        return DEFAULT_PEER_AUTHN
    return min(ranked, key=lambda entry: (entry[0], entry[1]))[2]
