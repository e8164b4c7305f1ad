"""The control plane's CA material, read from a directory and read again when its files change.

The directory holds what ``meshctl certs init`` writes (``ca.pem``, ``ca-key.pem``, optional
``root.pem``: see control_plane.ca), a root CA or an intermediate signed by an outside root, plus
an optional ``extra-roots.pem``: roots trusted beside the CA's own. The trust bundle pushed to
every sidecar is the CA's roots followed by the extra roots.

Rotating the root, with no restart and no failed call (docs/identity.md):

1. append the new root to ``extra-roots.pem``: every sidecar is pushed old + new roots;
2. put the new CA's ``ca.pem``/``ca-key.pem`` in place and move the old root to
   ``extra-roots.pem``: the CA signs with the new one, and each sidecar, told the signing CA
   changed, renews at once (jittered);
3. once every sidecar shows the new issuer, empty ``extra-roots.pem``: the old root is dropped.

:meth:`CaDirectory.refresh` notices a change by the files' mtimes and sizes. A change it cannot
load (a half-copied key, a CA that does not match its key) is logged and the material in force
stays; nothing changes on a rejected input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from control_plane.ca import CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CAError, CertificateAuthority
from control_plane.pki import cert_pem, read_certs

log = logging.getLogger(__name__)

EXTRA_ROOTS_FILE = "extra-roots.pem"
_FILES = (CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, EXTRA_ROOTS_FILE)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True, slots=True)
class Trust:
    """The CA in force and what verifiers trust."""

    authority: CertificateAuthority
    roots: tuple[x509.Certificate, ...]  # the CA's roots, then the extra ones

    @property
    def roots_pem(self) -> list[str]:
        return [cert_pem(root).decode() for root in self.roots]

    @property
    def signing_ca(self) -> str:
        """SHA-256 fingerprint (hex) of the certificate the CA signs with now."""
        return fingerprint(self.authority.certificate)


def load_trust(directory: Path) -> Trust:
    authority = CertificateAuthority.load(directory)
    roots = list(authority.roots)
    extra = directory / EXTRA_ROOTS_FILE
    if extra.exists() and extra.read_bytes().strip():
        for root in read_certs(extra, error=CAError):
            if root not in roots:
                roots.append(root)
    return Trust(authority, tuple(roots))


class CaDirectory:
    """The Trust of a directory, reloaded by :meth:`refresh` when a file changed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen = self._signature()
        self.trust = load_trust(directory)  # CAError: nothing usable there

    @classmethod
    def open(cls, directory: Path, *, create_trust_domain: str | None, now: datetime) -> CaDirectory:
        """Load the CA in `directory`; with `create_trust_domain`, create a root CA there first
        if the directory has none."""
        if create_trust_domain is not None and not (directory / CA_CERT_FILE).exists():
            CertificateAuthority.create(create_trust_domain, now=now).save(directory)
            log.info("created a root CA for trust domain %s in %s", create_trust_domain, directory)
        return cls(directory)

    def _signature(self) -> tuple[object, ...]:
        out: list[object] = []
        for name in _FILES:
            try:
                st = (self.directory / name).stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def refresh(self) -> bool:
        """Reload if a file changed; True when the Trust in force changed."""
        signature = self._signature()
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            trust = load_trust(self.directory)
        except (CAError, OSError) as exc:
            log.error(
                "CA directory %s changed but cannot be loaded; keeping the CA in force: %s",
                self.directory,
                exc,
            )
            return False
        if trust.signing_ca == self.trust.signing_ca and trust.roots == self.trust.roots:
            return False
        self.trust = trust
        log.info(
            "CA directory %s reloaded: signing with %s, %d trusted root(s)",
            self.directory,
            trust.signing_ca[:16],
            len(trust.roots),
        )
        return True
