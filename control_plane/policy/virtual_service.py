"""VirtualService: how calls to a service are routed (the supported subset of Istio's kind).

```yaml
spec:
  hosts: [users]                       # the services this routing applies to
  http:                                # routes, first match wins
  - name: canary-header
    match:                             # blocks OR'd, conditions inside a block AND'd
    - uri: {prefix: /demo.v1.Users/}   # uri is the gRPC :path; exact | prefix | regex
      headers: {x-canary: {exact: "true"}}   # exact | prefix | regex | present: true
    route:
    - destination: {host: users, subset: v2, port: {number: 50051}}
      weight: 100                      # weights sum to 100; a single route may omit it
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "unavailable,deadline-exceeded"}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 10}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1}}   # or a code 1..16
    mirror: {host: users, subset: v3}
    mirrorPercentage: {value: 5}
```

Choices beyond Istio's own validation, each to avoid a rule that silently does nothing:
``fault`` percentages are required (Istio's documentation and behaviour have disagreed on what a
missing one means); ``abort`` must be an error status (not OK); header matches on pseudo-headers
and ``-bin`` keys are refused; ``uri`` exact/prefix must start with '/' (every gRPC path does).
"""

from __future__ import annotations

from typing import Any

from control_plane.policy.fields import (
    INT32_MAX,
    Invalid,
    any_string,
    child,
    describe,
    dns_label,
    duration,
    fields,
    header_name,
    integer,
    item,
    list_of,
    map_of,
    one_of_words,
    percent_object,
    quoted,
    regex,
    service_host,
    string,
)

GRPC_STATUS_CODES: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

RETRY_ON: dict[str, str] = {
    "cancelled": "CANCELLED",
    "deadline-exceeded": "DEADLINE_EXCEEDED",
    "internal": "INTERNAL",
    "resource-exhausted": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
}
"""retryOn conditions (Istio's names, as Envoy spells gRPC codes) → gRPC status code names."""

# Envoy's HTTP-level retry conditions, which Istio users often copy; said clearly, not ignored.
_HTTP_RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
    }
)


def _retry_condition_key(condition: str) -> str:
    return condition.strip().lower().replace("_", "-")


def retry_on_codes(text: str) -> frozenset[str]:
    """The gRPC status code names in a valid ``retryOn`` value: Istio's names
    (``unavailable,deadline-exceeded``) or gRPC code names (``UNAVAILABLE``), in any case."""
    return frozenset(RETRY_ON[_retry_condition_key(part)] for part in text.split(","))


def grpc_status_code(value: int | str) -> int:
    """The numeric code of a valid ``fault.abort.grpcStatus`` (a name or a number)."""
    return value if isinstance(value, int) else GRPC_STATUS_CODES[value]


def _retry_on(value: object, path: str) -> str:
    text = string(value, path)
    supported = one_of_words(RETRY_ON, "and")
    for part in text.split(","):
        condition = part.strip()
        if not condition:
            raise Invalid(
                path,
                f"{quoted(text)} has an empty condition; write a comma list such as unavailable,cancelled",
            )
        if _retry_condition_key(condition) in RETRY_ON:
            continue
        if condition.lower() in _HTTP_RETRY_CONDITIONS:
            raise Invalid(
                path,
                f"{quoted(condition)} is an HTTP retry condition; gRPC calls are retried on status codes: "
                f"{supported}",
            )
        raise Invalid(
            path,
            f"{quoted(condition)} is not a supported retry condition; use a comma list of {supported} "
            "(gRPC code names such as DEADLINE_EXCEEDED also work)",
        )
    return text


def _grpc_status(value: object, path: str) -> int | str:
    names = ", ".join(name for name in GRPC_STATUS_CODES if name != "OK")
    if value in ("OK", 0) and not isinstance(value, bool):
        raise Invalid(path, "OK is not an error; an abort needs an error status such as UNAVAILABLE")
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 16:
            raise Invalid(path, f"gRPC status codes are 1..16, got {value}")
        return value
    if isinstance(value, str):
        if value in GRPC_STATUS_CODES:
            return value
        if value.upper() in GRPC_STATUS_CODES:
            raise Invalid(path, f"write the status name in capitals: {value.upper()}")
        if value.isdigit():
            raise Invalid(
                path, f"write the code as a number, not a string: {value} (or a name such as UNAVAILABLE)"
            )
    raise Invalid(path, f"must be a gRPC status name ({names}) or a code 1..16, got {describe(value)}")


def _destination(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "host": service_host,
            "subset": dns_label,
            "port": lambda v, p: fields(v, p, {"number": integer(1, 65535)}, required=("number",)),
        },
        required=("host",),
    )


def _mirror(value: object, path: str) -> dict[str, Any]:
    return fields(value, path, {"host": service_host, "subset": dns_label}, required=("host",))


def _route_destination(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {"destination": _destination, "weight": integer(0, 100)},
        required=("destination",),
        hints={"headers": "header manipulation is not supported"},
    )


def _routes(value: object, path: str) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = list_of(_route_destination, min_items=1)(value, path)
    if len(routes) > 1:
        for index, route in enumerate(routes):
            if "weight" not in route:
                raise Invalid(
                    child(item(path, index), "weight"),
                    "required when a route has more than one destination (weights must sum to 100)",
                )
    if any("weight" in route for route in routes):
        total = sum(route.get("weight", 0) for route in routes)
        if total != 100:
            raise Invalid(path, f"weights sum to {total}, must be 100")
    seen: dict[tuple[Any, ...], int] = {}
    for index, route in enumerate(routes):
        dest = route["destination"]
        key = (dest["host"], dest.get("subset"), dest.get("port", {}).get("number"))
        if key in seen:
            raise Invalid(
                child(item(path, index), "destination"),
                f"same destination as [{seen[key]}]; give it one route with the sum of the weights",
            )
        seen[key] = index
    return routes


def _uri_match(value: object, path: str) -> dict[str, Any]:
    def grpc_path(v: object, p: str) -> str:
        text = string(v, p)
        if not text.startswith("/"):
            raise Invalid(p, f"{quoted(text)} never matches: gRPC paths start with '/' (/pkg.Service/Method)")
        return text

    return fields(
        value,
        path,
        {"exact": grpc_path, "prefix": grpc_path, "regex": regex},
        exactly_one=[("exact", "prefix", "regex")],
    )


def _present(value: object, path: str) -> bool:
    if value is not True:
        raise Invalid(
            path, f"must be true (matching a header's absence is not supported), got {describe(value)}"
        )
    return True


def _header_match(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {"exact": any_string, "prefix": string, "regex": regex, "present": _present},
        exactly_one=[("exact", "prefix", "regex", "present")],
    )


def _match(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "name": string,
            "uri": _uri_match,
            "headers": map_of(header_name, _header_match, min_items=1, empty_hint="omit headers instead"),
        },
        hints={
            "method": "every gRPC call is a POST; match the gRPC method with uri",
            "authority": "the route's hosts choose the service",
            "withoutHeaders": "matching a header's absence is not supported",
        },
    )


def _retries(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {"attempts": integer(0, INT32_MAX), "perTryTimeout": duration(), "retryOn": _retry_on},
        hints={"backoff": "backoff follows gRFC A6 and is not configurable here"},
    )


def _delay(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {"fixedDelay": duration(), "percentage": percent_object},
        required=("fixedDelay", "percentage"),
        hints={"percent": "use percentage: {value: N}"},
    )


def _abort(value: object, path: str) -> dict[str, Any]:
    hint = "aborts use grpcStatus (a gRPC status name such as UNAVAILABLE, or a code 1..16)"
    return fields(
        value,
        path,
        {"grpcStatus": _grpc_status, "percentage": percent_object},
        required=("grpcStatus", "percentage"),
        hints={"httpStatus": hint, "http2Error": hint, "percent": "use percentage: {value: N}"},
    )


def _fault(value: object, path: str) -> dict[str, Any]:
    return fields(value, path, {"delay": _delay, "abort": _abort}, at_least_one=[("delay", "abort")])


def _http_route(value: object, path: str) -> dict[str, Any]:
    route = fields(
        value,
        path,
        {
            "name": string,
            "match": list_of(_match, min_items=1, empty_hint="omit match to match every call"),
            "route": _routes,
            "timeout": duration(),
            "retries": _retries,
            "fault": _fault,
            "mirror": _mirror,
            "mirrorPercentage": percent_object,
        },
        required=("route",),
        hints={
            "mirrors": "give one mirror (mirror + mirrorPercentage)",
            "mirrorPercent": "use mirrorPercentage: {value: N}",
            "mirror_percent": "use mirrorPercentage: {value: N}",
            "redirect": "only route destinations are supported",
            "directResponse": "only route destinations are supported",
            "rewrite": "rewriting the gRPC path or authority is not supported",
        },
    )
    if "mirrorPercentage" in route and "mirror" not in route:
        raise Invalid(child(path, "mirrorPercentage"), "needs mirror (where the copies go)")
    return route


def validate_spec(value: object, path: str = "spec") -> dict[str, Any]:
    """The canonical VirtualService spec, or Invalid naming the first problem."""
    return fields(
        value,
        path,
        {
            "hosts": list_of(service_host, min_items=1, unique=True),
            "http": list_of(_http_route, min_items=1),
        },
        required=("hosts", "http"),
        hints={
            "gateways": "the mesh has no gateways; routes apply to every sidecar calling the hosts",
            "tcp": "gRPC is routed with http routes",
            "tls": "gRPC is routed with http routes",
            "exportTo": "resources are visible across the mesh",
        },
    )
