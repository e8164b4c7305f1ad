"""The sidecar's workload certificate from the control plane's CA: bootstrap, rotation, trust.

`WorkloadIdentity.bootstrap()` gets the first certificate with the join token (the key is made
here and stays in memory). Then a background task renews it at half its remaining lifetime
(jittered ±`jitter`, so replicas started together do not renew together), proving the current
certificate; a renewal the CA refuses falls back to the join token while that is valid, and a
failed one is retried with backoff while the current certificate serves on. When the control
plane pushes a trust bundle (with every snapshot), it replaces the one the CA sent; when it says
the CA now signs with another certificate (a root rotation), the sidecar renews at once (within
`resign_jitter` seconds).

Every new certificate or bundle becomes a new pair of TLS contexts handed to `on_change`; the
sidecar swaps them in for new connections (see Sidecar._rotate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cryptography import x509
from mesh.v1 import ca_pb2_grpc, discovery_pb2

from control_plane.ca_source import fingerprint
from control_plane.pki import SigningKey, cert_pem, private_key_pem
from control_plane.possession import DISCOVERY, sign_proof
from sidecar import tls
from sidecar.ca_client import BadCertificate, Issued, fetch_certificate
from sidecar.discovery import Backoff
from sidecar.tasks import cancel_all

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
OnChange = Callable[[ssl.SSLContext, ssl.SSLContext], None]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CertificateUnavailable(Exception):
    """The first certificate could not be obtained (refused, or the CA is unreachable)."""


def identity_proof(
    chain_pem: bytes, key: SigningKey, node_id: str, now: datetime
) -> discovery_pb2.IdentityProof:
    """Proof for the discovery stream that this sidecar holds the key of its certificate."""
    unix_time = int(now.timestamp())
    return discovery_pb2.IdentityProof(
        certificate_chain=chain_pem.decode(),
        unix_time=unix_time,
        signature=sign_proof(key, DISCOVERY, unix_time, node_id.encode()),
    )


def renew_delay(issued: Issued, now: datetime, rand: random.Random, jitter: float) -> float:
    """Seconds from `now` until the renewal of `issued`: half of what is left of its lifetime,
    scaled by a random factor in [1 - jitter, 1 + jitter]."""
    remaining = (issued.leaf.not_valid_after_utc - now).total_seconds()
    return max(0.0, remaining * 0.5 * (1.0 + jitter * (2.0 * rand.random() - 1.0)))


class WorkloadIdentity:
    def __init__(
        self,
        target: str,
        token: str,
        on_change: OnChange,
        *,
        clock: Clock = _utc_now,
        rand: random.Random | None = None,
        jitter: float = 0.2,
        resign_jitter: float = 2.0,
        backoff: Backoff | None = None,
        channel_factory: Callable[[str], Any] = grpc.aio.insecure_channel,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.target = target
        self._token = token
        self._on_change = on_change
        self._clock = clock
        self._rand = rand if rand is not None else random.Random()
        self.jitter = jitter
        self.resign_jitter = resign_jitter
        self._backoff = backoff if backoff is not None else Backoff(initial=0.5, maximum=10.0)
        self._channel_factory = channel_factory
        self._channel: Any = None
        self.issued: Issued | None = None
        self.roots: tuple[x509.Certificate, ...] = ()  # the trust bundle in force
        self.signing_ca = ""  # the CA's signing certificate, as last pushed
        self.renew_at: datetime | None = None
        self.renewals = 0
        self.failures = 0
        self.last_error = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state

    @property
    def spiffe_id(self) -> str:
        return str(self.issued.spiffe_id) if self.issued is not None else ""

    def not_after(self) -> datetime | None:
        return self.issued.leaf.not_valid_after_utc if self.issued is not None else None

    def _stub(self) -> ca_pb2_grpc.CertificateServiceStub:
        if self._channel is None:
            self._channel = self._channel_factory(self.target)
        return ca_pb2_grpc.CertificateServiceStub(self._channel)

    # ------------------------------------------------------------------ lifecycle

    async def bootstrap(self, timeout: float = 30.0) -> None:
        """Get the first certificate with the join token, retrying an unreachable CA until
        `timeout`; a refusal (bad or expired token) is final. Raises CertificateUnavailable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                issued = await fetch_certificate(self._stub(), now=self._clock(), token=self._token)
                break
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise CertificateUnavailable(
                        f"the CA at {self.target} refused the join token: {code.name}: {exc.details()}"
                    ) from None
                message = f"{code.name}: {exc.details()}"
            except BadCertificate as exc:
                message = str(exc)
            delay = self._backoff.next()
            if loop.time() + delay > deadline:
                raise CertificateUnavailable(f"no certificate from the CA at {self.target}: {message}")
            log.info("certificate: %s; retrying in %.2fs", message, delay)
            await asyncio.sleep(delay)
        self._backoff.reset()
        self._install(issued)

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._renew_loop(), name="certificate-renewal")

    async def stop(self) -> None:
        await cancel_all([self._task])
        self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def set_trust(self, roots_pem: tuple[str, ...], signing_ca: str) -> None:
        """The trust bundle and signing CA of a pushed snapshot (already parsed and checked)."""
        if not roots_pem:
            return
        roots = tuple(x509.load_pem_x509_certificate(pem.encode()) for pem in roots_pem)
        if roots != self.roots:
            self.roots = roots
            if self.issued is not None:
                log.info("certificate: trust bundle now %d root(s)", len(roots))
                self._apply_contexts()
        if signing_ca and signing_ca != self.signing_ca:
            self.signing_ca = signing_ca
            issuer = self.issued.issuer if self.issued is not None else None
            if issuer is not None and fingerprint(issuer) != signing_ca:
                delay = self._rand.random() * self.resign_jitter
                log.info("certificate: the CA signs with a new certificate; renewing in %.2fs", delay)
                self._schedule(self._clock() + timedelta(seconds=delay))

    # ------------------------------------------------------------------ internals

    def _install(self, issued: Issued) -> None:
        self.issued = issued
        if not self.roots:
            self.roots = issued.roots
        self._apply_contexts()
        delay = renew_delay(issued, self._clock(), self._rand, self.jitter)
        self._schedule(self._clock() + timedelta(seconds=delay))
        log.info(
            "certificate: %s serial %x, not after %s; renewing in %.1fs",
            issued.spiffe_id,
            issued.leaf.serial_number,
            issued.leaf.not_valid_after_utc.isoformat(),
            delay,
        )

    def _apply_contexts(self) -> None:
        issued = self.issued
        assert issued is not None
        roots = "".join(cert_pem(root).decode() for root in self.roots)
        server, client = tls.contexts_from_pem(issued.presented_pem, private_key_pem(issued.key), roots)
        self._on_change(server, client)

    def _schedule(self, when: datetime) -> None:
        self.renew_at = when
        self._wake.set()

    async def _renew_loop(self) -> None:
        while True:
            self._wake.clear()
            assert self.renew_at is not None
            delay = (self.renew_at - self._clock()).total_seconds()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue  # woken (rescheduled) or due: look again
            try:
                await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the loop die: the current certificate serves on
                self.failures += 1
                self.last_error = str(exc) or type(exc).__name__
                retry = self._backoff.next()
                log.warning("certificate: renewal failed (%s); retrying in %.2fs", self.last_error, retry)
                self.renew_at = self._clock() + timedelta(seconds=retry)

    async def _renew(self) -> None:
        current = self.issued
        assert current is not None
        try:
            issued = await fetch_certificate(self._stub(), now=self._clock(), current=current)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise RuntimeError(f"{exc.code().name}: {exc.details()}") from None
            log.warning("certificate: renewal refused (%s); trying the join token", exc.details())
            try:
                issued = await fetch_certificate(self._stub(), now=self._clock(), token=self._token)
            except grpc.aio.AioRpcError as again:
                raise RuntimeError(f"{again.code().name}: {again.details()}") from None
        self._backoff.reset()
        self.renewals += 1
        self._install(issued)
