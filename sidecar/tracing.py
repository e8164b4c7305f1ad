"""OpenTelemetry tracing of relayed calls: a CLIENT span in the outbound sidecar, a SERVER span in
the inbound one, exported over OTLP/gRPC in batches.

Configured by the standard variables: on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (and neither `OTEL_SDK_DISABLED=true` nor
`OTEL_TRACES_EXPORTER=none`); `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` choose the
sampler (default `parentbased_always_on`); `OTEL_SERVICE_NAME` names the service (default: the
sidecar's). The exporter reads its own `OTEL_EXPORTER_OTLP_*` settings (headers, timeout,
insecure, ...).

The caller's context comes from W3C `traceparent` (+ `tracestate`), else B3 (`b3`, or
`x-b3-traceid`/`x-b3-spanid`/`x-b3-sampled`). The sidecar decides sampling itself, from the
header bytes, before any OpenTelemetry object exists: a call that is not sampled costs a scan of
its headers (and, at the root, one random trace id), and changes nothing. A sidecar sends a
context with every call it sampled, so a sidecar called by another one without a context knows
the caller did not sample it (with a parent-based sampler). Only a sampled call makes an SDK
span. The span's context replaces the `traceparent` sent upstream, so the next hop's span is its
child. Export runs on the SDK's batch thread: a full queue drops spans, a down collector delays
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from sidecar.h2.hpack_codec import Header

_HEX = frozenset(b"0123456789abcdef")
_MAX = 1 << 64
_LOW_64 = _MAX - 1
# gRPC codes a server span reports as errors (OpenTelemetry RPC conventions); a client span
# reports every code but OK.
_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


class TracingConfigError(ValueError):
    """An OTEL_* variable the sidecar cannot use: names the variable and why."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class Sampler:
    """The OpenTelemetry sampler named by OTEL_TRACES_SAMPLER, decided on ids: `traceidratio`
    samples a trace when its id's lower 64 bits are below ratio * 2^64, as the SDK does, so every
    hop with the same ratio makes the same choice."""

    __slots__ = ("bound", "name", "parent_based", "ratio")

    def __init__(self, name: str = "parentbased_always_on", ratio: float = 1.0) -> None:
        if name not in SAMPLERS:
            raise TracingConfigError(
                "OTEL_TRACES_SAMPLER", f"expected one of {', '.join(SAMPLERS)}, got {name!r}"
            )
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError("OTEL_TRACES_SAMPLER_ARG", f"expected a ratio in [0, 1], got {ratio!r}")
        self.name = name
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        self.ratio = {"always_on": 1.0, "always_off": 0.0}.get(root, ratio)
        self.bound = round(self.ratio * _MAX)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Sampler:
        name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        ratio = 1.0
        if arg and name.endswith("traceidratio"):
            try:
                ratio = float(arg)
            except ValueError:
                raise TracingConfigError(
                    "OTEL_TRACES_SAMPLER_ARG", f"expected a number, got {arg!r}"
                ) from None
        return cls(name, ratio)

    def sampled(self, trace_id: int, parent_sampled: bool | None) -> bool:
        """`parent_sampled`: the caller's flag, None when the call came without a context."""
        if parent_sampled is not None and self.parent_based:
            return parent_sampled
        return (trace_id & _LOW_64) < self.bound

    def __repr__(self) -> str:
        return f"Sampler({self.name!r}, ratio={self.ratio})"


def _hex(value: bytes, length: int) -> int | None:
    if len(value) != length or not _HEX.issuperset(value):
        return None
    number = int(value, 16)
    return number or None


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """`00-TRACEID-SPANID-FLAGS` → (trace id, span id, sampled); None when malformed."""
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff" or (parts[0] == b"00" and len(parts) != 4):
        return None
    trace_id, span_id, flags = _hex(parts[1], 32), _hex(parts[2], 16), parts[3]
    if trace_id is None or span_id is None or len(flags) != 2 or not _HEX.issuperset(flags):
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _b3_id(value: bytes, length: int) -> int | None:
    if len(value) == 16 and length == 32:
        value = value.rjust(32, b"0")  # 64-bit B3 trace ids
    return _hex(value, length)


def parse_b3(single: bytes | None, multi: Mapping[bytes, bytes]) -> tuple[int, int, bool | None] | None:
    """B3, single (`b3: TRACEID-SPANID[-SAMPLED[-PARENT]]`) or multi-header; sampled None when
    B3 leaves the decision open."""
    if single is not None:
        parts = single.strip().split(b"-")
        if len(parts) < 2:
            return None
        trace_id, span_id = _b3_id(parts[0], 32), _b3_id(parts[1], 16)
        flag = parts[2] if len(parts) > 2 else b""
    else:
        trace_id = _b3_id(multi.get(b"x-b3-traceid", b"").strip(), 32)
        span_id = _b3_id(multi.get(b"x-b3-spanid", b"").strip(), 16)
        flag = (
            b"1" if multi.get(b"x-b3-flags", b"").strip() == b"1" else multi.get(b"x-b3-sampled", b"").strip()
        )
    if trace_id is None or span_id is None:
        return None
    sampled = True if flag in (b"1", b"d", b"true") else False if flag in (b"0", b"false") else None
    return trace_id, span_id, sampled


def _traceparent(trace_id: int, span_id: int, sampled: bool) -> Header:
    return (b"traceparent", b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00"), False)


class _PresetIds(IdGenerator):
    """The SDK's ids: the trace id the sidecar sampled on, for a root span (set just before the
    span starts; everything runs on the event loop); random span ids."""

    def __init__(self, rand: random.Random) -> None:
        self.rand = rand
        self.next_trace_id = 0

    def generate_span_id(self) -> int:
        return self.rand.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        trace_id, self.next_trace_id = self.next_trace_id, 0
        return trace_id or (self.rand.getrandbits(128) or 1)


class CallTrace:
    """One relayed call's tracing: the headers to send upstream (with this hop's `traceparent`)
    and, when sampled, its span."""

    __slots__ = ("headers", "span")

    def __init__(self, headers: tuple[Header, ...], span: Any = None) -> None:
        self.headers = headers
        self.span = span

    def retried(self, attempt: int, status: int, backoff: float) -> None:
        """Attempt `attempt - 1` failed with `status`; attempt `attempt` starts after `backoff`
        seconds: an event on the call's span (its upstream spans are children of the same span)."""
        span = self.span
        if span is not None:
            span.add_event(
                "retry",
                {
                    "grpc_mesh.attempt": attempt,
                    "rpc.grpc.status_code": status,
                    "grpc_mesh.backoff_ms": backoff * 1e3,
                },
            )

    def end(self, status: int, attempts: int = 1) -> None:
        span = self.span
        if span is None:
            return
        span.set_attribute("rpc.grpc.status_code", status)
        if attempts > 1:
            span.set_attribute("grpc_mesh.attempts", attempts)
        if status and (span.kind is SpanKind.CLIENT or status in _SERVER_ERRORS):
            span.set_status(Status(StatusCode.ERROR))
        span.end()


_TRACE_HEADERS = frozenset(
    {b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled", b"x-b3-flags"}
)


class Tracer:
    """Starts a CallTrace for each call of one sidecar (both directions)."""

    def __init__(
        self,
        exporter: SpanExporter,
        sampler: Sampler,
        *,
        service_name: str,
        resource: Mapping[str, str] | None = None,
        rand: random.Random | None = None,
        max_queue_size: int | None = None,  # None: OTEL_BSP_MAX_QUEUE_SIZE, else the SDK's 2048
        schedule_delay_millis: float | None = None,  # None: OTEL_BSP_SCHEDULE_DELAY, else 5000
    ) -> None:
        self.sampler = sampler
        self.rand = rand if rand is not None else random.Random()
        self.ids = _PresetIds(self.rand)
        attributes: dict[str, str] = {"service.name": service_name, **(resource or {})}
        self.processor = BatchSpanProcessor(
            exporter, max_queue_size=max_queue_size, schedule_delay_millis=schedule_delay_millis
        )
        self.provider = TracerProvider(
            sampler=ALWAYS_ON,  # the decision is made before a span is started
            resource=Resource.create(attributes),
            id_generator=self.ids,
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("grpc-mesh-sidecar")

    def start(
        self, headers: tuple[Header, ...], path: str, direction: str, from_sidecar: bool = False
    ) -> CallTrace | None:
        """The call's trace (None: nothing to add or record, the headers go on as they are).
        `from_sidecar`: the call came from another sidecar (mutual TLS), which sends a context
        with every call it sampled, so with a parent-based sampler a call without one is not
        sampled either; otherwise a call without a context is a new trace's root."""
        traceparent = None
        other = False
        for header in headers:
            name = header[0]
            if name in _TRACE_HEADERS:
                if name == b"traceparent":
                    traceparent = header[1]
                else:
                    other = True
        sampler = self.sampler
        if traceparent is not None:
            if traceparent[-3:] == b"-00" and sampler.parent_based:
                return None  # the common case: the caller decided not to sample
        elif not other:
            if from_sidecar and sampler.parent_based:
                return None  # the calling sidecar did not sample it
            trace_id = self.rand.getrandbits(128) or 1
            if (trace_id & _LOW_64) < sampler.bound:
                return self._span(headers, path, direction, trace_id, None, None)
            return None  # a root not sampled: nothing is sent, the next sidecar knows
        return self._continue(headers, path, direction)

    def _continue(self, headers: tuple[Header, ...], path: str, direction: str) -> CallTrace | None:
        """A call with a trace context other than an unsampled W3C one."""
        traceparent = tracestate = b3 = None
        b3_multi: dict[bytes, bytes] = {}
        for name, value, _ in headers:
            if name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
            elif name == b"b3":
                b3 = value
            elif name in _TRACE_HEADERS:
                b3_multi[name] = value
        parent: tuple[int, int, bool | None] | None = None
        if traceparent is not None:
            parent = parse_traceparent(traceparent)
        if parent is None and (b3 is not None or b3_multi):
            parent = parse_b3(b3, b3_multi)
            tracestate = None  # it went with a W3C header we did not take
        if parent is None:  # malformed: a new trace, as without one
            trace_id = self.rand.getrandbits(128) or 1
            if self.sampler.sampled(trace_id, None):
                return self._span(headers, path, direction, trace_id, None, None)
            if direction != "outbound":
                return None
            return CallTrace(_replace(headers, _traceparent(trace_id, self.rand.getrandbits(64) or 1, False)))
        trace_id, span_id, parent_sampled = parent
        if not self.sampler.sampled(trace_id, parent_sampled):
            if traceparent is not None and parent_sampled is False:
                return None  # the caller's traceparent already says so
            return CallTrace(_replace(headers, _traceparent(trace_id, span_id, False)))
        return self._span(headers, path, direction, trace_id, span_id, tracestate)

    def _span(
        self,
        headers: tuple[Header, ...],
        path: str,
        direction: str,
        trace_id: int,
        parent_span_id: int | None,
        tracestate: bytes | None,
    ) -> CallTrace:
        if parent_span_id is None:
            context = None
            self.ids.next_trace_id = trace_id
        else:
            state = TraceState.from_header([tracestate.decode("ascii", "replace")]) if tracestate else None
            parent = SpanContext(trace_id, parent_span_id, True, TraceFlags(TraceFlags.SAMPLED), state)
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        service, _, method = path.lstrip("/").partition("/")
        span = self.tracer.start_span(
            path.lstrip("/"),
            context=context,
            kind=SpanKind.CLIENT if direction == "outbound" else SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        span_id = span.get_span_context().span_id
        return CallTrace(_replace(headers, _traceparent(trace_id, span_id, True)), span)

    async def shutdown(self, timeout: float = 2.0) -> None:
        """Export what is queued and stop the batch thread, waiting at most `timeout` seconds (a
        collector that is down must not hold the sidecar's exit): on a daemon thread, as the
        exporter's retries block."""
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def shut() -> None:
            try:
                self.provider.shutdown()
            finally:
                loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shut, name="otel-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)


def _replace(headers: tuple[Header, ...], traceparent: Header) -> tuple[Header, ...]:
    """`headers` with `traceparent` in place of the one it has (or added)."""
    out = [h for h in headers if h[0] != b"traceparent"]
    out.append(traceparent)
    return tuple(out)


def tracer_from_env(
    service: str, env: Mapping[str, str] | None = None, rand: random.Random | None = None
) -> Tracer | None:
    """The sidecar's tracer as the OTEL_* variables say, or None when tracing is off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name != "otlp":
        raise TracingConfigError(
            "OTEL_TRACES_EXPORTER", f"only otlp (or none) is supported, got {exporter_name!r}"
        )
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    )
    if protocol != "grpc":
        raise TracingConfigError("OTEL_EXPORTER_OTLP_PROTOCOL", f"only grpc is supported, got {protocol!r}")
    sampler = Sampler.from_env(env)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return Tracer(
        OTLPSpanExporter(),
        sampler,
        service_name=env.get("OTEL_SERVICE_NAME", "").strip() or service,
        rand=rand,
    )
