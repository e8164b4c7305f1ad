"""The CA over gRPC (mesh.v1.CertificateService): a CSR in, a chain for the proven identity out.

Who the caller is comes from its proof, never from the CSR:

- first issuance: a join token (control_plane.join_tokens) in ``authorization: Bearer <jwt>``;
  the identity is the token's namespace and service in the CA's trust domain;
- renewal: ``renewal`` holds the current certificate chain and a signature with its key over the
  time and the new CSR (control_plane.possession). The chain must be a valid SVID of this trust
  domain under a root in the trust bundle (old and new roots during a rotation); the identity is
  its SPIFFE ID. Renewing proves possession over the plaintext discovery port without mTLS, and
  a captured proof cannot get a certificate for any other key.

The CSR's own names are ignored; the leaf carries the proven identity only. No proof or a bad
one is UNAUTHENTICATED, a proof for another trust domain PERMISSION_DENIED, a bad CSR
INVALID_ARGUMENT; nothing is issued then. Each outcome is counted (``signed``, ``refused``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cryptography import x509
from mesh.v1 import ca_pb2, ca_pb2_grpc

from control_plane.api_errors import ApiError, Internal, InvalidArgument
from control_plane.auth import TokenVerifier
from control_plane.ca import DEFAULT_LEAF_TTL, CAError, InvalidCSR, IssuedCertificate
from control_plane.ca_source import Trust
from control_plane.grpc_errors import abort
from control_plane.join_tokens import verify_join_token
from control_plane.pki import cert_pem
from control_plane.possession import RENEWAL, check_proof
from control_plane.spiffe import SpiffeId

log = logging.getLogger(__name__)

SERVICE_NAME: str = ca_pb2.DESCRIPTOR.services_by_name["CertificateService"].full_name
MAX_CSR_BYTES = 16 * 1024
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Issuer:
    """Signs CSRs for proven identities with the CA in force (`trust()`, which may change)."""

    def __init__(
        self,
        trust: Callable[[], Trust],
        verifier: TokenVerifier,
        *,
        trust_domain: str,
        ttl: timedelta = DEFAULT_LEAF_TTL,
        clock: Clock = _utc_now,
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError(f"certificate ttl must be positive, got {ttl}")
        self._trust = trust
        self._verifier = verifier
        self.trust_domain = trust_domain
        self.ttl = ttl
        self._clock = clock
        self.signed = 0
        self.refused: Counter[str] = Counter()  # by gRPC status name

    def issue(
        self, request: ca_pb2.CreateCertificateRequest, authorization: str | None
    ) -> tuple[IssuedCertificate, Trust]:
        """Raises ApiError (counted in `refused`) when nothing may be issued."""
        try:
            result = self._issue(request, authorization)
        except ApiError as error:
            self.refused[error.code] += 1
            raise
        self.signed += 1
        return result

    def _issue(
        self, request: ca_pb2.CreateCertificateRequest, authorization: str | None
    ) -> tuple[IssuedCertificate, Trust]:
        now = self._clock()
        trust = self._trust()
        csr = request.csr.encode()
        if not csr:
            raise InvalidArgument("csr is empty: send a PEM certificate signing request", field="csr")
        if len(csr) > MAX_CSR_BYTES:
            raise InvalidArgument(f"csr is larger than {MAX_CSR_BYTES} bytes", field="csr")
        if request.HasField("renewal"):
            identity = self._renewing(request.renewal, csr, trust, now)
        else:
            workload = verify_join_token(self._verifier, authorization)
            identity = SpiffeId(self.trust_domain, workload.namespace, workload.service)
        try:
            issued = trust.authority.sign_csr(csr, identity, self.ttl, now)
        except InvalidCSR as exc:
            raise InvalidArgument(str(exc), field="csr") from None
        except CAError as exc:
            log.error("the CA cannot sign for %s: %s", identity, exc)
            raise Internal() from None
        return issued, trust

    def _renewing(self, renewal: ca_pb2.Renewal, csr: bytes, trust: Trust, now: datetime) -> SpiffeId:
        identity, _ = check_proof(
            renewal.certificate_chain,
            renewal.unix_time,
            renewal.signature,
            purpose=RENEWAL,
            payload=csr,
            roots=trust.roots,
            trust_domain=self.trust_domain,
            now=now,
            what="renewal",
        )
        return identity


def response_of(issued: IssuedCertificate, trust: Trust) -> ca_pb2.CreateCertificateResponse:
    chain = [cert.decode() for cert in _split(issued.full_chain_pem)]
    top = x509.load_pem_x509_certificate(chain[-1].encode())
    for root in trust.authority.roots:
        if top != root and top.issuer == root.subject:
            chain.append(cert_pem(root).decode())  # leaf → root
            break
    response = ca_pb2.CreateCertificateResponse(
        cert_chain=chain,
        trust_bundle=trust.roots_pem,
        spiffe_id=str(SpiffeId.parse(_only_uri(issued.certificate))),
    )
    response.not_after.FromDatetime(issued.certificate.not_valid_after_utc)
    return response


def _split(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + marker + b"\n" for part in pem.split(marker) if part.strip()]


def _only_uri(cert: x509.Certificate) -> str:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


class CertificateServicer(ca_pb2_grpc.CertificateServiceServicer):  # type: ignore[misc]
    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer

    async def CreateCertificate(self, request: Any, context: Any) -> Any:
        authorization = dict(context.invocation_metadata() or ()).get("authorization")
        try:
            issued, trust = self.issuer.issue(request, authorization)
            return response_of(issued, trust)
        except ApiError as error:
            log.info("refused a CSR: %s", error.message)
            await abort(context, error)
        except Exception:
            log.exception("%s/CreateCertificate failed", SERVICE_NAME)
            await abort(context, Internal())


def add_to_server(issuer: Issuer, server: grpc.aio.Server) -> CertificateServicer:
    servicer = CertificateServicer(issuer)
    ca_pb2_grpc.add_CertificateServiceServicer_to_server(servicer, server)
    return servicer
