"""A stand-in for the control plane's REST API, for meshctl's tests: a real HTTP server on a
loopback port (in a thread) that records every request and answers with canned JSON.

Each (method, path) has a queue of replies: they are used in order and the last one repeats,
so a test can script a sidecar list that progresses (PENDING, PENDING, ACK) and then holds.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Reply = tuple[int, Any]  # (HTTP status, JSON body; bytes are sent as they are)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, None when there was no body
    raw: bytes


class FakeControlPlane:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies: dict[tuple[str, str], list[Reply]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self  # type: ignore[attr-defined]
        # A short poll interval keeps shutdown() quick: it waits for serve_forever to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-control-plane"
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeControlPlane:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def reply(self, method: str, path: str, body: Any, status: int = 200) -> None:
        """Answer every `method path` with `body` (replacing what was scripted before)."""
        self.replies(method, path, [(status, body)])

    def replies(self, method: str, path: str, sequence: Sequence[Reply]) -> None:
        """Answer successive `method path` requests with `sequence`; its last reply then repeats."""
        assert sequence, "at least one reply"
        with self._lock:
            self._replies[(method, path)] = list(sequence)

    def error(self, method: str, path: str, status: int, code: str, message: str, **extra: str) -> None:
        self.reply(method, path, {"error": {"code": code, "message": message, **extra}}, status)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        split = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = RecordedRequest(
            method=handler.command,
            path=urllib.parse.unquote(split.path),
            query=dict(urllib.parse.parse_qsl(split.query)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=json.loads(raw) if raw else None,
            raw=raw,
        )
        with self._lock:
            self.requests.append(request)
            queue = self._replies.get((request.method, split.path))
            if queue is None:
                status, body = 404, {"error": {"code": "NOT_FOUND", "message": f"no reply for {split.path}"}}
            else:
                status, body = queue[0] if len(queue) == 1 else queue.pop(0)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


class _Handler(BaseHTTPRequestHandler):
    def _handle(self) -> None:
        fake: FakeControlPlane = self.server.fake  # type: ignore[attr-defined]
        fake._answer(self)

    do_GET = _handle
    do_POST = _handle
    do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- Canned values in the API's JSON shapes ------------------------------------------------


def resource_json(
    name: str,
    spec: dict[str, Any],
    *,
    kind: str = "VirtualService",
    namespace: str = "default",
    version: int = 12,
    update_time: str = "2030-06-01T11:58:00Z",
) -> dict[str, Any]:
    return {
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "spec": spec,
        "resourceVersion": str(version),
        "updateTime": update_time,
    }


def result_json(resource: dict[str, Any], action: str, diff: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"resource": resource, "action": action}
    if diff:
        body["diff"] = diff
    return body


def sidecar_json(
    node_id: str,
    *,
    service: str = "users",
    revision: int = 12,
    state: str = "ACK",
    sent_version: str = "v12",
    sent_revision: int | None = None,
    connected: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """A SidecarStatus as protobuf JSON prints it: false booleans and zero numbers left out.
    `sent_revision` (the revision the last sent snapshot was built for) defaults to `revision`."""
    body: dict[str, Any] = {
        "nodeId": node_id,
        "service": service,
        "namespace": "default",
        "labels": {"version": "v1"},
        "inboundAddress": "127.0.0.1:15006",
        "identity": f"spiffe://cluster.local/ns/default/sa/{service}",
        "appliedVersion": f"v{revision}",
        "sentVersion": sent_version,
        "state": state,
        "lastSeen": "2030-06-01T11:59:57Z",
        "serving": True,
        "adminAddress": "127.0.0.1:15000",
        **fields,
    }
    if revision:
        body["appliedRevision"] = str(revision)
    sent = revision if sent_revision is None else sent_revision
    if sent:
        body["sentRevision"] = str(sent)
    if connected:
        body["connected"] = True
    return body


def sidecars_json(*sidecars: dict[str, Any], revision: int = 12) -> dict[str, Any]:
    return {"sidecars": list(sidecars), "storeRevision": str(revision)}
