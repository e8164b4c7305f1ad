"""Traces from real sidecars to an in-test OTLP/gRPC receiver (opentelemetry-proto's
TraceService): one trace per call, the caller's trace id kept, the outbound sidecar's CLIENT span
the parent of the inbound sidecar's SERVER span (and the caller's span the parent of the CLIENT
one), the RPC attributes, the trace id in both access logs; with the collector gone, calls still
succeed and the sidecars still stop cleanly."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from demo.v1 import users_pb2, users_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.clients import channel
from tests.support.mesh import CLIENT, AppSpec, Mesh, access_log_path, running_mesh, wait_for

pytestmark = pytest.mark.integration

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class Span:
    service: str  # the resource's service.name
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value for a in resource_spans.resource.attributes}
                service = attrs["service.name"].string_value
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            Span(
                                service,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.name,
                                s.kind,
                                {a.key: _value(a.value) for a in s.attributes},
                                s.status.code,
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


@dataclass
class Traced:
    mesh: Mesh
    receiver: Receiver
    server: Any


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
            env.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
            env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
            env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
            env.delenv("OTEL_SERVICE_NAME", raising=False)
            root = tmp_path_factory.mktemp("tracing")
            with running_mesh(root, [AppSpec("users", "users")], access_log=True) as mesh:
                yield Traced(mesh, receiver, server)
    finally:
        server.stop(None)


def _spans_of(traced: Traced, trace_id: str) -> list[Span]:
    wait_for(lambda: len(traced.receiver.trace(trace_id)) >= 2, 15, f"two spans of trace {trace_id}")
    spans = traced.receiver.trace(trace_id)
    assert len(spans) == 2, spans
    return sorted(spans, key=lambda s: s.kind)  # SERVER (2) before CLIENT (3)


def _log_trace_ids(traced: Traced, name: str) -> list[str]:
    path = access_log_path(traced.mesh.root, name)
    return [json.loads(line)["trace_id"] for line in path.read_text().splitlines() if line]


def test_a_call_with_the_callers_context_is_one_trace_across_both_sidecars(traced: Traced) -> None:
    with channel(traced.mesh.outbound, "users") as ch:
        stub = users_pb2_grpc.UsersStub(ch)
        stub.CreateUser(
            users_pb2.CreateUserRequest(name="Ada"),
            timeout=10,
            metadata=[("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"), ("tracestate", "app=1")],
        )
    server, client = _spans_of(traced, CALLER_TRACE)
    assert (client.service, client.kind) == (CLIENT, trace_pb2.Span.SPAN_KIND_CLIENT)
    assert (server.service, server.kind) == ("users", trace_pb2.Span.SPAN_KIND_SERVER)
    assert client.parent_span_id == CALLER_SPAN
    assert server.parent_span_id == client.span_id
    for span in (client, server):
        assert span.name == "demo.v1.Users/CreateUser"
        assert span.attributes == {
            "rpc.system": "grpc",
            "rpc.service": "demo.v1.Users",
            "rpc.method": "CreateUser",
            "rpc.grpc.status_code": 0,
        }
        assert span.status_code == trace_pb2.Status.STATUS_CODE_UNSET
    wait_for(lambda: CALLER_TRACE in _log_trace_ids(traced, "users"), 10, "the users access log line")
    assert CALLER_TRACE in _log_trace_ids(traced, CLIENT)


def test_a_call_without_context_starts_a_trace_at_the_outbound_sidecar(traced: Traced) -> None:
    before = set(_log_trace_ids(traced, CLIENT))
    with channel(traced.mesh.outbound, "users") as ch, pytest.raises(grpc.RpcError) as info:
        users_pb2_grpc.UsersStub(ch).GetUser(users_pb2.GetUserRequest(id="nobody"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    wait_for(lambda: len(_log_trace_ids(traced, CLIENT)) > len(before), 10, "the client's access log line")
    [trace_id] = set(_log_trace_ids(traced, CLIENT)) - before
    assert len(trace_id) == 32
    server, client = _spans_of(traced, trace_id)
    assert client.parent_span_id == ""
    assert server.parent_span_id == client.span_id
    assert client.attributes["rpc.grpc.status_code"] == server.attributes["rpc.grpc.status_code"] == 5
    assert client.status_code == trace_pb2.Status.STATUS_CODE_ERROR  # any code but OK, client side
    assert server.status_code == trace_pb2.Status.STATUS_CODE_UNSET  # NOT_FOUND is the caller's error
    wait_for(lambda: trace_id in _log_trace_ids(traced, "users"), 10, "the users access log line")


def test_a_call_the_sidecar_refuses_is_a_client_span_with_its_status(traced: Traced) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with channel(traced.mesh.outbound, "nosuch") as ch, pytest.raises(grpc.RpcError) as info:
        ch.unary_unary("/nosuch.v1.Nothing/Call")(
            b"", timeout=10, metadata=[("traceparent", f"00-{trace}-{CALLER_SPAN}-01")]
        )
    code = info.value.code().value[0]
    wait_for(lambda: len(traced.receiver.trace(trace)) >= 1, 15, "the refused call's span")
    [span] = traced.receiver.trace(trace)
    assert (span.service, span.kind, span.parent_span_id) == (
        CLIENT,
        trace_pb2.Span.SPAN_KIND_CLIENT,
        CALLER_SPAN,
    )
    assert span.attributes["rpc.grpc.status_code"] == code != 0
    assert span.status_code == trace_pb2.Status.STATUS_CODE_ERROR


def test_calls_succeed_with_the_collector_gone(traced: Traced) -> None:
    traced.server.stop(None).wait()
    with channel(traced.mesh.outbound, "users") as ch:
        stub = users_pb2_grpc.UsersStub(ch)
        for i in range(20):
            stub.CreateUser(users_pb2.CreateUserRequest(name=f"user-{i}"), timeout=10)
    # the fixture then stops every process and checks each exited 0 in time
