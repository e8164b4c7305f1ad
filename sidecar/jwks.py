"""JSON Web Key Sets for JWT verification: parsed once, fetched off the call path, refreshed.

`parse_jwks(text)` keeps the keys a token can be verified with here: RSA keys (RS256) and EC
P-256 keys (ES256) meant for signatures; symmetric, other-curve and encryption keys are dropped
(a token is never verified with a key its issuer did not publish for that algorithm).

`JwksStore` holds the key sets of the `jwksUri`s the pushed RequestAuthentications name. `track`
(at snapshot apply) reads `file://` sets at once and starts one task per `http(s)://` set that
fetches it (aiohttp), then again every `refresh` seconds; a failed fetch is logged and retried
with backoff while the last good set stays in force. `get` is a dict lookup: calls never wait
for a fetch. A token whose `kid` is in no key (the issuer rotated its keys) asks for an early
refetch (`request_refresh`), at most once per `min_refetch` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import jwt

from sidecar.tasks import cancel_all

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
REFRESH_SECONDS = 20 * 60.0  # Istio's default JWKS refresh
RETRY_SECONDS = (1.0, 60.0)  # first and largest pause after a failed fetch
MIN_REFETCH_SECONDS = 30.0  # an unknown kid triggers at most one early refetch per this
FETCH_TIMEOUT_SECONDS = 10.0
MAX_JWKS_BYTES = 1 << 20


class JwksError(ValueError):
    """A document that is not a usable JSON Web Key Set (the message says why)."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """Usable keys, by `kid` (keys without one are under ""), and all of them per algorithm."""

    by_kid: Mapping[str, tuple[jwt.PyJWK, ...]]
    by_algorithm: Mapping[str, tuple[jwt.PyJWK, ...]] = field(default_factory=dict)

    def candidates(self, kid: str | None, algorithm: str) -> tuple[jwt.PyJWK, ...]:
        keys = self.by_kid.get(kid, ()) if kid else self.by_algorithm.get(algorithm, ())
        return tuple(k for k in keys if k.algorithm_name == algorithm)


def parse_jwks(text: str | bytes) -> KeySet:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"not JSON: {exc}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise JwksError('not a JSON Web Key Set: an object with a non-empty "keys" list')
    by_kid: dict[str, list[jwt.PyJWK]] = {}
    by_algorithm: dict[str, list[jwt.PyJWK]] = {}
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a key type or curve that cannot verify RS256/ES256, or a broken key
        if key.algorithm_name not in ALGORITHMS:
            continue
        kid = entry.get("kid")
        by_kid.setdefault(kid if isinstance(kid, str) else "", []).append(key)
        by_algorithm.setdefault(key.algorithm_name, []).append(key)
    if not by_algorithm:
        raise JwksError("has no key for RS256 (RSA) or ES256 (EC P-256) signatures")
    return KeySet({k: tuple(v) for k, v in by_kid.items()}, {k: tuple(v) for k, v in by_algorithm.items()})


def file_path(uri: str) -> Path | None:
    """The local path of a file:// URI, else None."""
    parts = urlsplit(uri)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


Fetch = Callable[[str], Awaitable[bytes]]


class JwksStore:
    def __init__(
        self,
        *,
        refresh: float = REFRESH_SECONDS,
        retry: tuple[float, float] = RETRY_SECONDS,
        min_refetch: float = MIN_REFETCH_SECONDS,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh = refresh
        self.retry = retry
        self.min_refetch = min_refetch
        self.clock = clock
        self._fetch = fetch
        self._session: aiohttp.ClientSession | None = None
        self._keys: dict[str, KeySet] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._last_fetch: dict[str, float] = {}
        self.errors: dict[str, str] = {}  # uri → why its last fetch failed (for /config_dump)

    def get(self, uri: str) -> KeySet | None:
        return self._keys.get(uri)

    def track(self, uris: Iterable[str]) -> None:
        """Keep exactly `uris` fetched: start the new ones, stop and forget the others."""
        wanted = set(uris)
        for uri in list(self._tasks):
            if uri not in wanted:
                self._tasks.pop(uri).cancel()
                self._wake.pop(uri, None)
        for uri in list(self._keys):
            if uri not in wanted:
                del self._keys[uri]
        for uri in sorted(wanted - set(self._tasks)):
            path = file_path(uri)
            if path is not None and uri not in self._keys:
                self._load_file(uri, path)  # local and small: in force before the first call
            self._wake[uri] = asyncio.Event()
            self._tasks[uri] = asyncio.get_running_loop().create_task(self._keep_fresh(uri))

    def request_refresh(self, uri: str) -> None:
        """Fetch `uri` again soon (a token named a kid its set does not have)."""
        wake = self._wake.get(uri)
        last = self._last_fetch.get(uri)
        if wake is not None and (last is None or self.clock() - last >= self.min_refetch):
            wake.set()

    async def _keep_fresh(self, uri: str) -> None:
        pause = self.retry[0]
        fetched = uri in self._keys  # a file read by track
        while True:
            if fetched:
                wake = self._wake[uri]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.refresh)
                wake.clear()
            fetched = await self._fetch_once(uri)
            if fetched:
                pause = self.retry[0]
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.retry[1])

    async def _fetch_once(self, uri: str) -> bool:
        self._last_fetch[uri] = self.clock()
        try:
            path = file_path(uri)
            body = path.read_bytes() if path is not None else await self._get(uri)
            keys = parse_jwks(body)
        except (OSError, aiohttp.ClientError, TimeoutError, JwksError) as exc:
            reason = str(exc) or type(exc).__name__
            if self.errors.get(uri) != reason:
                log.warning("JWKS %s: fetch failed, keeping the last good keys: %s", uri, reason)
            self.errors[uri] = reason
            return False
        self.errors.pop(uri, None)
        self._keys[uri] = keys
        return True

    def _load_file(self, uri: str, path: Path) -> None:
        try:
            self._keys[uri] = parse_jwks(path.read_bytes())
            self._last_fetch[uri] = self.clock()
        except (OSError, JwksError) as exc:
            self.errors[uri] = str(exc)
            log.warning("JWKS %s: cannot read: %s", uri, exc)

    async def _get(self, uri: str) -> bytes:
        if self._fetch is not None:
            return await self._fetch(uri)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS))
        async with self._session.get(uri, headers={"accept": "application/json"}) as response:
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            body = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
            return body

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_all(tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None
