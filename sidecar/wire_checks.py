"""The checks on what travels over discovery, shared by both ends so that they cannot disagree.

Every name, label, address and identity in a snapshot comes from some sidecar's Hello. The control
plane's registry refuses a Hello that fails these checks (INVALID_ARGUMENT), and a sidecar refuses
a snapshot that fails them (`sidecar.discovery.from_proto`, a Nack) — with the same functions, so a
Hello the registry accepts can never make the other sidecars Nack.

A check raises `CheckFailed(path, reason)`; each side re-raises it as its own error
(`InvalidHello`, `SnapshotRejected`), keeping the path and the reason. This module lives in the
sidecar and the control plane imports it; its only import from the control plane is the SPIFFE ID
parser (`control_plane.spiffe`, a leaf module the sidecar already uses to read its certificate).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from control_plane.spiffe import SpiffeId

NAME_CHARS = "-_."
MAX_HOST_LENGTH = 253
MAX_HOST_LABEL_LENGTH = 63


class CheckFailed(ValueError):
    """A value that does not pass: `path` names the field, `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def is_name(value: str, extra: str = "") -> bool:
    return bool(value) and all(c.isalnum() or c in NAME_CHARS + extra for c in value)


def check_name(value: str, path: str, *, extra: str = "") -> str:
    """A service, namespace or resource name: letters, digits, '-', '_', '.' (plus `extra`)."""
    if not value:
        raise CheckFailed(path, "required")
    if not is_name(value, extra):
        shown = ", ".join(f"'{c}'" for c in NAME_CHARS + extra)
        raise CheckFailed(path, f"expected a name (letters, digits, {shown}), got {value!r}")
    return value


def check_labels(labels: Mapping[str, str], path: str) -> None:
    """Label names must not be empty (values may be)."""
    for key in labels:
        if not key:
            raise CheckFailed(path, "empty label name")


def check_grpc_service(value: str, path: str) -> str:
    """A fully-qualified gRPC service name, as it appears in :path (`/<service>/<method>`)."""
    if not value or "/" in value or any(c.isspace() or not c.isprintable() for c in value):
        raise CheckFailed(path, f"not a gRPC service name: {value!r}")
    return value


def check_identity(value: str, path: str) -> str:
    """Empty, or a workload's SPIFFE ID (`spiffe://<trust domain>/ns/<namespace>/sa/<service>`)."""
    if value:
        try:
            SpiffeId.parse(value)
        except ValueError as exc:
            raise CheckFailed(path, str(exc)) from None
    return value


def check_host(host: str, path: str, raw: str) -> None:
    """An IP address, or a DNS host name (labels of ASCII letters, digits and '-')."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if len(host) > MAX_HOST_LENGTH or not all(_is_host_label(label) for label in host.split(".")):
        raise CheckFailed(path, f"bad host in {raw!r}")


def _is_host_label(label: str) -> bool:
    return 0 < len(label) <= MAX_HOST_LABEL_LENGTH and all(
        c.isascii() and (c.isalnum() or c == "-") for c in label
    )


def check_address(value: str, path: str) -> tuple[str, int]:
    """`host:port` or `[IPv6]:port` with a real port (1..65535); returns (host, port), the host
    without brackets. Two addresses are the same endpoint when these are equal."""
    if ":" not in value:
        raise CheckFailed(path, f"expected 'host:port', got {value!r}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise CheckFailed(path, f"bad IPv6 address in {value!r}") from None
    elif ":" in host:
        raise CheckFailed(path, f"IPv6 addresses need brackets: '[host]:port', got {value!r}")
    if not host:
        raise CheckFailed(path, f"missing host in {value!r}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise CheckFailed(path, f"port must be 1..65535, got {port_text!r}")
    port = int(port_text)
    if port == 0:
        raise CheckFailed(path, f"port 0 is not a real port in {value!r}")
    check_host(host, path, value)
    return host, port
