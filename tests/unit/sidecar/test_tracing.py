"""Tracing decisions on header bytes (sidecar.tracing): the OTEL_* sampler settings, W3C and B3
parents, the traceparent sent upstream, and the spans the SDK gets (an in-memory exporter)."""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.tracing import (
    Sampler,
    Tracer,
    TracingConfigError,
    parse_b3,
    parse_traceparent,
    tracer_from_env,
)

TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = 0xB7AD6B7169203331
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PATH = "/demo.v1.Users/GetUser"
BASE = ((b"content-type", b"application/grpc", False), (b"x-user", b"ada", False))


def _tracer(sampler: Sampler | None = None, seed: int = 7) -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer = Tracer(exporter, sampler or Sampler(), service_name="client", rand=random.Random(seed))
    return tracer, exporter


def _finished(tracer: Tracer, exporter: InMemorySpanExporter) -> list:  # type: ignore[type-arg]
    tracer.processor.force_flush()
    return list(exporter.get_finished_spans())


def _sent(headers: tuple[tuple[bytes, bytes, bool], ...]) -> tuple[int, int, bool]:
    [value] = [v for n, v, _ in headers if n == b"traceparent"]
    parsed = parse_traceparent(value)
    assert parsed is not None
    return parsed


def test_sampler_settings_from_the_standard_variables() -> None:
    assert repr(Sampler.from_env({})) == "Sampler('parentbased_always_on', ratio=1.0)"
    assert repr(
        Sampler.from_env(
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
        )
    ) == ("Sampler('parentbased_traceidratio', ratio=0.01)")
    assert (
        Sampler.from_env({"OTEL_TRACES_SAMPLER": "always_off", "OTEL_TRACES_SAMPLER_ARG": "0.5"}).ratio == 0.0
    )
    for env, variable in [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ]:
        with pytest.raises(TracingConfigError) as caught:
            Sampler.from_env(env)
        assert caught.value.variable == variable
        assert str(caught.value).startswith(f"{variable}: expected")


def test_ratio_sampling_is_decided_by_the_trace_id() -> None:
    sampler = Sampler("traceidratio", 0.25)
    assert sampler.sampled((1 << 64) // 4 - 1, None)
    assert not sampler.sampled((1 << 64) // 4, None)
    assert not sampler.sampled((5 << 64) | ((1 << 64) // 2), True)  # not parent based: the id decides
    rand = random.Random(1)
    share = sum(sampler.sampled(rand.getrandbits(128), None) for _ in range(20_000)) / 20_000
    assert abs(share - 0.25) < 0.02
    parent_based = Sampler("parentbased_traceidratio", 0.0)
    assert parent_based.sampled(1, True) and not parent_based.sampled(0, False)


def test_tracing_is_off_without_an_endpoint_and_refuses_what_it_cannot_do() -> None:
    assert tracer_from_env("users", {}) is None
    assert (
        tracer_from_env(
            "users", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "true"}
        )
        is None
    )
    assert (
        tracer_from_env(
            "users", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL: only grpc"):
        tracer_from_env(
            "users",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        )
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER: only otlp"):
        tracer_from_env(
            "users", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_TRACES_EXPORTER": "zipkin"}
        )


def test_header_parsing() -> None:
    assert parse_traceparent(TRACEPARENT) == (TRACE, PARENT, True)
    assert parse_traceparent(TRACEPARENT[:-1] + b"0") == (TRACE, PARENT, False)
    for bad in (
        TRACEPARENT[:-3],  # no flags
        b"ff-" + TRACEPARENT[3:],  # version ff is invalid
        b"00-" + b"0" * 32 + TRACEPARENT[35:],  # all-zero trace id
        TRACEPARENT.upper(),  # upper-case hex
        TRACEPARENT + b"-extra",  # version 00 has exactly four fields
    ):
        assert parse_traceparent(bad) is None, bad
    # a later version may add fields
    assert parse_traceparent(b"01-" + TRACEPARENT[3:] + b"-what") == (TRACE, PARENT, True)
    assert parse_b3(b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", {}) == (TRACE, PARENT, True)
    assert parse_b3(b"8448eb211c80319c-b7ad6b7169203331", {}) == (0x8448EB211C80319C, PARENT, None)
    multi = {
        b"x-b3-traceid": b"0af7651916cd43dd8448eb211c80319c",
        b"x-b3-spanid": b"b7ad6b7169203331",
        b"x-b3-sampled": b"0",
    }
    assert parse_b3(None, multi) == (TRACE, PARENT, False)
    assert parse_b3(b"0", {}) is None


def test_a_root_call_gets_a_client_span_and_sends_its_context() -> None:
    tracer, exporter = _tracer()
    call = tracer.start(BASE, PATH, "outbound")
    assert call is not None and call.span is not None
    assert call.headers[:2] == BASE  # the app's headers stay, in order
    trace_id, span_id, sampled = _sent(call.headers)
    assert sampled
    call.end(5)
    [span] = _finished(tracer, exporter)
    assert span.name == "demo.v1.Users/GetUser"
    assert span.kind == SpanKind.CLIENT
    assert span.parent is None
    assert (span.context.trace_id, span.context.span_id) == (trace_id, span_id)
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "demo.v1.Users",
        "rpc.method": "GetUser",
        "rpc.grpc.status_code": 5,
    }
    assert span.status.status_code == StatusCode.ERROR  # a client span: any code but OK
    assert span.resource.attributes["service.name"] == "client"


def test_a_server_span_is_the_child_of_the_callers_span() -> None:
    tracer, exporter = _tracer()
    headers = (*BASE, (b"traceparent", TRACEPARENT, False), (b"tracestate", b"vendor=1", False))
    call = tracer.start(headers, PATH, "inbound")
    assert call is not None
    trace_id, span_id, _ = _sent(call.headers)
    assert trace_id == TRACE and span_id != PARENT
    assert (b"tracestate", b"vendor=1", False) in call.headers
    call.end(5)  # NOT_FOUND is no server error
    [span] = _finished(tracer, exporter)
    assert span.kind == SpanKind.SERVER
    assert span.parent.span_id == PARENT and span.parent.is_remote
    assert span.context.trace_id == TRACE
    assert span.context.trace_state.get("vendor") == "1"
    assert span.status.status_code == StatusCode.UNSET
    call = tracer.start(headers, PATH, "inbound")
    assert call is not None
    call.end(14)
    assert _finished(tracer, exporter)[-1].status.status_code == StatusCode.ERROR


def test_b3_parents_are_accepted_and_continued_as_w3c() -> None:
    tracer, exporter = _tracer()
    call = tracer.start(
        (*BASE, (b"b3", b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", False)), PATH, "outbound"
    )
    assert call is not None
    assert _sent(call.headers)[0] == TRACE
    call.end(0)
    [span] = _finished(tracer, exporter)
    assert span.parent.span_id == PARENT


def test_unsampled_calls_make_no_span_and_change_nothing() -> None:
    tracer, exporter = _tracer(Sampler("parentbased_traceidratio", 0.0))
    # the caller decided: its headers go on untouched
    assert tracer.start((*BASE, (b"traceparent", TRACEPARENT[:-1] + b"0", False)), PATH, "outbound") is None
    # a root that is not sampled: nothing sent (a sidecar sends a context with what it sampled)
    assert tracer.start(BASE, PATH, "outbound") is None
    # from another sidecar without a context: that sidecar did not sample it, even at ratio 1
    always = Tracer(InMemorySpanExporter(), Sampler("parentbased_always_on"), service_name="users")
    assert always.start(BASE, PATH, "inbound", from_sidecar=True) is None
    # ... while a plaintext (PERMISSIVE) caller without one starts a trace here
    root = always.start(BASE, PATH, "inbound", from_sidecar=False)
    assert root is not None and root.span is not None
    # a non-parent-based sampler decides on its own
    own = Tracer(InMemorySpanExporter(), Sampler("always_on"), service_name="users")
    assert own.start(BASE, PATH, "inbound", from_sidecar=True) is not None
    # a sampled parent is followed even at ratio 0
    sampled = tracer.start((*BASE, (b"traceparent", TRACEPARENT, False)), PATH, "outbound")
    assert sampled is not None and sampled.span is not None
    sampled.end(0)
    # an unsampled B3 parent: continued as W3C with flags 00
    b3 = tracer.start(
        (*BASE, (b"b3", b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0", False)), PATH, "outbound"
    )
    assert b3 is not None and b3.span is None
    assert _sent(b3.headers) == (TRACE, PARENT, False)
    assert len(_finished(tracer, exporter)) == 1


def test_retries_show_on_the_calls_span_as_attempts() -> None:
    tracer, exporter = _tracer()
    call = tracer.start(BASE, PATH, "outbound")
    assert call is not None
    call.retried(2, 14, 0.025)
    call.retried(3, 14, 0.05)
    call.end(0, attempts=3)
    [span] = _finished(tracer, exporter)
    assert span.attributes["grpc_mesh.attempts"] == 3
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert [(name, a["grpc_mesh.attempt"], a["rpc.grpc.status_code"]) for name, a in events] == [
        ("retry", 2, 14),
        ("retry", 3, 14),
    ]
