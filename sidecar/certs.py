"""What /certs shows: the sidecar's certificate and its trust bundle, read once and again only
when a file changes (its mtime or size)."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path

from cryptography import x509


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
            ids = _spiffe_ids(cert)
            self._cert = {
                "path": str(self.cert_path),
                "serial": format(cert.serial_number, "x"),
                "spiffe_id": ids[0] if len(ids) == 1 else "",
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "not_before": _stamp(cert.not_valid_before_utc),
                "not_after": _stamp(cert.not_valid_after_utc),
            }
            self._cert_not_after = cert.not_valid_after_utc
            bundle = x509.load_pem_x509_certificates(self.ca_path.read_bytes())
            self._bundle = [
                {
                    "subject": ca.subject.rfc4514_string(),
                    "serial": format(ca.serial_number, "x"),
                    "not_after": _stamp(ca.not_valid_after_utc),
                }
                for ca in bundle
            ]
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
