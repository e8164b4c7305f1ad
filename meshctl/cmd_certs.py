"""``meshctl certs``: create the mesh CA, issue static-mode workload certificates, inspect a PEM file.

Exit codes: 0 done, 1 the operation failed (existing CA, missing or bad files), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from control_plane.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CAError,
    CertificateAuthority,
    SpiffeId,
    issue_workload_files,
)
from control_plane.pki import is_ca, read_certs

Clock = Callable[[], datetime]
DEFAULT_DIR = "certs"
DEFAULT_TRUST_DOMAIN = "cluster.local"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def positive_int(text: str) -> int:
    """argparse type for a count or an id that must be > 0 (shared by the meshctl commands)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *, clock: Clock = _utc_now
) -> None:
    """Add ``certs {init,issue,show}``; each sets ``run`` to a ``callable(args) -> int``."""
    certs = subparsers.add_parser(
        "certs",
        help="manage the mesh CA and workload certificates",
        description="Manage the mesh certificate authority and static-mode workload certificates.",
    )
    sub = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")

    init = sub.add_parser(
        "init", help="create a new root CA", description="Create a self-signed mesh root CA."
    )
    init.add_argument(
        "--dir", default=DEFAULT_DIR, help="directory for ca.pem / ca-key.pem (default: %(default)s)"
    )
    init.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="SPIFFE trust domain (default: %(default)s)"
    )
    init.add_argument(
        "--days", type=positive_int, default=3650, help="CA validity in days (default: %(default)s)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA in --dir")
    init.set_defaults(run=functools.partial(_run_init, clock=clock))

    issue = sub.add_parser(
        "issue",
        help="issue a workload certificate (static mode)",
        description="Issue <service>.pem, <service>-key.pem and ca.pem, signed by the CA in --dir.",
    )
    issue.add_argument("--service", required=True, help="service name (the SPIFFE sa/ segment)")
    issue.add_argument("--namespace", default="default", help="namespace (default: %(default)s)")
    issue.add_argument("--trust-domain", default=None, help="trust domain (default: the CA's)")
    issue.add_argument("--dir", default=DEFAULT_DIR, help="directory holding the CA (default: %(default)s)")
    issue.add_argument("--out", default=None, help="output directory (default: the CA directory)")
    issue.add_argument(
        "--hours", type=positive_int, default=24, help="validity in hours (default: %(default)s)"
    )
    issue.set_defaults(run=functools.partial(_run_issue, clock=clock))

    show = sub.add_parser(
        "show", help="print the certificates in a PEM file", description="Describe a PEM file."
    )
    show.add_argument("file", metavar="FILE", help="PEM file holding one or more certificates")
    show.set_defaults(run=functools.partial(_run_show, clock=clock))


def _fail(action: str, message: str, code: int = 1) -> int:
    print(f"meshctl certs {action}: error: {message}", file=sys.stderr)
    return code


def _run_init(args: argparse.Namespace, *, clock: Clock) -> int:
    directory = Path(args.dir)
    existing = [name for name in (CA_CERT_FILE, CA_KEY_FILE) if (directory / name).exists()]
    if existing and not args.force:
        return _fail(
            "init",
            f"a CA already exists in {directory} ({', '.join(existing)}); pass --force to replace it "
            "(certificates it issued will no longer be trusted)",
        )
    try:
        ca = CertificateAuthority.create(args.trust_domain, now=clock(), validity=timedelta(days=args.days))
    except ValueError as exc:
        return _fail("init", str(exc), 2)
    try:
        ca.save(directory)
    except OSError as exc:
        return _fail("init", f"cannot write {directory}: {exc.strerror or exc}")
    cert = ca.certificate
    print(f"created root CA for trust domain {args.trust_domain} in {directory}")
    print(f"  {directory / CA_CERT_FILE}  (trust bundle, not after {cert.not_valid_after_utc.isoformat()})")
    print(f"  {directory / CA_KEY_FILE}  (private key, mode 0600)")
    print(f"  sha256 fingerprint {cert.fingerprint(hashes.SHA256()).hex(':')}")
    return 0


def _run_issue(args: argparse.Namespace, *, clock: Clock) -> int:
    try:
        ca = CertificateAuthority.load(args.dir)
    except CAError as exc:
        hint = "" if Path(args.dir, CA_CERT_FILE).exists() else " (run `meshctl certs init` first)"
        return _fail("issue", f"{exc}{hint}")
    trust_domain = args.trust_domain or ca.trust_domain or DEFAULT_TRUST_DOMAIN
    try:
        identity = SpiffeId(trust_domain, args.namespace, args.service)
    except ValueError as exc:
        return _fail("issue", str(exc), 2)
    out = Path(args.out if args.out is not None else args.dir)
    try:
        files = issue_workload_files(ca, identity, out, ttl=timedelta(hours=args.hours), now=clock())
    except CAError as exc:
        return _fail("issue", str(exc))
    except OSError as exc:
        return _fail("issue", f"cannot write {out}: {exc.strerror or exc}")
    print(f"issued {identity}")
    print(f"  {files.cert}  (certificate and chain)")
    print(f"  {files.key}  (private key, mode 0600)")
    print(f"  {files.ca}  (trust bundle)")
    return 0


def _describe_names(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "(none)"
    names: list[str] = []
    for name in san:
        if isinstance(name, x509.UniformResourceIdentifier):
            names.append(f"URI:{name.value}")
        elif isinstance(name, x509.DNSName):
            names.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            names.append(f"IP:{name.value}")
        elif isinstance(name, x509.RFC822Name):
            names.append(f"email:{name.value}")
        else:
            names.append(str(name))
    return ", ".join(names) if names else "(none)"


def _run_show(args: argparse.Namespace, *, clock: Clock) -> int:
    try:
        certs = read_certs(Path(args.file))
    except ValueError as exc:
        return _fail("show", str(exc))
    now = clock()
    for index, cert in enumerate(certs):
        if len(certs) > 1:
            print(f"certificate {index + 1} of {len(certs)}")
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        status = "expired" if now >= end else "not yet valid" if now < start else "valid"
        print(f"  subject:    {cert.subject.rfc4514_string() or '(empty)'}")
        print(f"  issuer:     {cert.issuer.rfc4514_string() or '(empty)'}")
        print(f"  serial:     {cert.serial_number:x}")
        print(f"  SAN:        {_describe_names(cert)}")
        print(f"  not before: {start.isoformat()}")
        print(f"  not after:  {end.isoformat()}  ({status})")
        print(f"  CA:         {'yes' if is_ca(cert) else 'no'}")
    return 0
