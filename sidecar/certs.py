"""What /certs shows: the sidecar's certificate and its trust bundle. From files (`CertInfo`:
read once and again only when a file changes, its mtime or size), or as the control plane's CA
issued them (`IssuedCertInfo`: the certificate in memory, its renewal time and count)."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from control_plane.ca_source import fingerprint

if TYPE_CHECKING:
    from sidecar.identity import WorkloadIdentity


def _stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _spiffe_ids(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe://")
    ]


def describe(cert: x509.Certificate) -> dict[str, object]:
    ids = _spiffe_ids(cert)
    return {
        "serial": format(cert.serial_number, "x"),
        "spiffe_id": ids[0] if len(ids) == 1 else "",
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": _stamp(cert.not_valid_before_utc),
        "not_after": _stamp(cert.not_valid_after_utc),
    }


def describe_bundle(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> list[dict[str, object]]:
    return [
        {
            "subject": ca.subject.rfc4514_string(),
            "serial": format(ca.serial_number, "x"),
            "not_after": _stamp(ca.not_valid_after_utc),
        }
        for ca in certs
    ]


class IssuedCertInfo:
    def __init__(self, identity: WorkloadIdentity) -> None:
        self.identity = identity

    def as_json(self) -> dict[str, object]:
        identity = self.identity
        issued = identity.issued
        certificate: dict[str, object] = {"source": f"control plane CA at {identity.target}"}
        if issued is not None:
            certificate.update(describe(issued.leaf))
            certificate["seconds_left"] = round(issued.leaf.not_valid_after_utc.timestamp() - time.time(), 1)
            certificate["chain_length"] = len(issued.chain)
            if issued.issuer is not None:
                certificate["issuer_sha256"] = fingerprint(issued.issuer)
        if identity.renew_at is not None:
            certificate["renew_at"] = _stamp(identity.renew_at)
        certificate["renewals"] = identity.renewals
        out: dict[str, object] = {
            "certificate": certificate,
            "trust_bundle": {
                "source": "pushed by the control plane",
                "certificates": describe_bundle(identity.roots),
            },
        }
        if identity.last_error:
            out["error"] = f"last renewal failed: {identity.last_error}"
        return out


class CertInfo:
    def __init__(self, cert: Path, ca: Path) -> None:
        self.cert_path = cert
        self.ca_path = ca
        self._seen: tuple[object, ...] | None = None
        self._cert: dict[str, object] = {}
        self._bundle: list[dict[str, object]] = []
        self._cert_not_after: datetime | None = None
        self._error = ""
        self._refresh()

    def _signature(self) -> tuple[object, ...]:
        sig: list[object] = []
        for path in (self.cert_path, self.ca_path):
            try:
                st = path.stat()
                sig.append((st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append(None)
        return tuple(sig)

    def _refresh(self) -> None:
        signature = self._signature()
        if signature == self._seen:
            return
        self._seen = signature
        self._error = ""
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            self._cert = {"path": str(self.cert_path), **describe(cert)}
            self._cert_not_after = cert.not_valid_after_utc
            self._bundle = describe_bundle(x509.load_pem_x509_certificates(self.ca_path.read_bytes()))
        except (OSError, ValueError) as exc:
            self._error = f"cannot read the certificates: {exc}"

    def as_json(self) -> dict[str, object]:
        with contextlib.suppress(OSError):
            self._refresh()
        out: dict[str, object] = {
            "certificate": dict(self._cert),
            "trust_bundle": {"path": str(self.ca_path), "certificates": list(self._bundle)},
        }
        if self._cert_not_after is not None:
            out["certificate"]["seconds_left"] = round(  # type: ignore[index]
                self._cert_not_after.timestamp() - time.time(), 1
            )
        if self._error:
            out["error"] = self._error
        return out
