"""VirtualService: the supported subset validates to its canonical form; every rule refuses a bad
value naming the document, the field path and the reason."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from control_plane.policy import validate
from control_plane.policy.virtual_service import grpc_status_code, retry_on_codes
from control_plane.resources import ResourceKey
from tests.support.policy_docs import DELETE, check_error, doc, edit

CANARY: dict[str, Any] = {
    "hosts": ["users"],
    "http": [
        {
            "name": "canary-testers",
            "match": [{"headers": {"x-canary": {"exact": "true"}}}],
            "route": [{"destination": {"host": "users", "subset": "v2"}}],
        },
        {
            "name": "one-method",
            "match": [
                {"name": "create", "uri": {"exact": "/demo.v1.Users/CreateUser"}},
                {"uri": {"regex": r"/demo\.v1\.Users/(Update|Delete)User"}},
            ],
            "route": [
                {"destination": {"host": "users", "subset": "v1", "port": {"number": 50051}}, "weight": 100}
            ],
        },
        {
            "name": "split",
            "match": [{"uri": {"prefix": "/demo.v1.Users/"}, "headers": {"x-tenant": {"prefix": "acme-"}}}],
            "route": [
                {"destination": {"host": "users", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "users", "subset": "v2"}, "weight": 10},
            ],
            "timeout": "2s",
            "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "unavailable,deadline-exceeded"},
            "fault": {
                "delay": {"fixedDelay": "1.5s", "percentage": {"value": 0.5}},
                "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1}},
            },
            "mirror": {"host": "users", "subset": "v3"},
            "mirrorPercentage": {"value": 5},
        },
        {"route": [{"destination": {"host": "users-fallback.default.svc"}}]},
    ],
}

BASE = doc("VirtualService", CANARY)


def test_realistic_canary_is_valid_and_canonical_is_what_was_written() -> None:
    document = validate(BASE)

    assert document.key == ResourceKey("VirtualService", "default", "users")
    assert document.spec == CANARY
    assert json.loads(json.dumps(document.spec)) == CANARY
    assert list(document.spec["http"][2]) == list(CANARY["http"][2])  # field order kept
    assert document.expected_version is None
    assert document.delete is False


def test_canonical_spec_is_a_copy() -> None:
    original = copy.deepcopy(BASE)
    document = validate(BASE)
    document.spec["http"][0]["route"][0]["destination"]["host"] = "changed"
    assert original == BASE


def test_defaults_are_not_filled_in_and_nulls_are_dropped() -> None:
    spec = {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}}], "timeout": None}]}
    assert validate(doc("VirtualService", spec)).spec == {
        "hosts": ["users"],
        "http": [{"route": [{"destination": {"host": "users"}}]}],
    }


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.http[3].route[0].weight", 100),  # a single route may say 100
        (
            "spec.http[2].route",
            [  # 100/0 and 0/100
                {"destination": {"host": "users", "subset": "v1"}, "weight": 100},
                {"destination": {"host": "users", "subset": "v2"}, "weight": 0},
            ],
        ),
        ("spec.http[2].retries", {"attempts": 7}),  # more than gRPC's cap of 5: capped at run time
        ("spec.http[2].retries", {"attempts": 0}),
        ("spec.http[2].retries.retryOn", "UNAVAILABLE, DEADLINE_EXCEEDED,cancelled"),
        ("spec.http[2].retries.retryOn", "internal,resource-exhausted"),
        ("spec.http[2].fault", {"abort": {"grpcStatus": 14, "percentage": {"value": 50}}}),
        ("spec.http[2].fault", {"delay": {"fixedDelay": "1h30m", "percentage": {"value": 100}}}),
        ("spec.http[2].timeout", "1m"),
        ("spec.http[2].timeout", "200ms"),
        ("spec.http[2].mirrorPercentage", DELETE),
        ("spec.http[0].match[0].headers.x-canary", {"present": True}),
        ("spec.http[0].match[0].headers.x-canary", {"exact": ""}),
        ("spec.http[0].match[0].headers.x-canary", {"regex": "tr(ue|y)"}),
        ("spec.hosts", ["users", "users.default.svc.cluster.local"]),
    ],
)
def test_valid_variants(path: str, value: Any) -> None:
    validate(edit(BASE, path, value))


BAD: list[tuple[str, Any, str, str]] = [
    # (field to set, value, error path, reason)
    # hosts
    ("spec.hosts", DELETE, "spec.hosts", "=required"),
    ("spec.hosts", [], "spec.hosts", "must not be empty"),
    ("spec.hosts", "users", "spec.hosts", "must be a list, got the string"),
    ("spec.hosts", ["users", "users"], "spec.hosts[1]", "listed twice"),
    ("spec.hosts[0]", "Users", "spec.hosts[0]", "is not a service name"),
    ("spec.hosts[0]", "*.example.com", "spec.hosts[0]", "wildcard hosts are not supported"),
    ("spec.hosts[0]", "", "spec.hosts[0]", "must not be empty"),
    ("spec.hosts[0]", 7, "spec.hosts[0]", "must be a string, got the number 7 (quote it"),
    ("spec.gateways", ["mesh"], "spec.gateways", "field not supported"),
    ("spec.tcp", [], "spec.tcp", "field not supported"),
    # http
    ("spec.http", DELETE, "spec.http", "=required"),
    ("spec.http", [], "spec.http", "must not be empty"),
    ("spec.http[0]", "route", "spec.http[0]", "must be a mapping"),
    ("spec.http[0].route", DELETE, "spec.http[0].route", "=required"),
    ("spec.http[0].route", [], "spec.http[0].route", "must not be empty"),
    ("spec.http[0].redirect", {"uri": "/x"}, "spec.http[0].redirect", "field not supported"),
    ("spec.http[0].rewrite", {"uri": "/x"}, "spec.http[0].rewrite", "field not supported"),
    ("spec.http[0].name", "", "spec.http[0].name", "must not be empty"),
    # match
    ("spec.http[1].match[0].name", "", "spec.http[1].match[0].name", "must not be empty"),
    ("spec.http[0].match", [], "spec.http[0].match", "omit match to match every call"),
    ("spec.http[1].match[0].uri", {}, "spec.http[1].match[0].uri", "needs one of exact, prefix or regex"),
    (
        "spec.http[1].match[0].uri",
        {"exact": "/a/B", "prefix": "/a/"},
        "spec.http[1].match[0].uri",
        "exact and prefix cannot be used together",
    ),
    (
        "spec.http[1].match[0].uri",
        {"prefix": "demo.v1.Users/"},
        "spec.http[1].match[0].uri.prefix",
        "start with '/'",
    ),
    ("spec.http[1].match[0].uri", {"exact": "x"}, "spec.http[1].match[0].uri.exact", "never matches"),
    (
        "spec.http[1].match[1].uri.regex",
        "(unclosed",
        "spec.http[1].match[1].uri.regex",
        'regex "(unclosed" does not',
    ),
    (
        "spec.http[1].match[0].uri",
        {"suffix": "/x"},
        "spec.http[1].match[0].uri.suffix",
        "field not supported",
    ),
    (
        "spec.http[1].match[0].ignoreUriCase",
        True,
        "spec.http[1].match[0].ignoreUriCase",
        "field not supported",
    ),
    (
        "spec.http[1].match[0].method",
        {"exact": "POST"},
        "spec.http[1].match[0].method",
        "every gRPC call is a POST",
    ),
    ("spec.http[1].match[0].queryParams", {}, "spec.http[1].match[0].queryParams", "field not supported"),
    ("spec.http[0].match[0].headers", {}, "spec.http[0].match[0].headers", "must not be empty"),
    (
        "spec.http[0].match[0].headers",
        {"X-Canary": {"exact": "1"}},
        "spec.http[0].match[0].headers.X-Canary",
        "lower-case",
    ),
    (
        "spec.http[0].match[0].headers",
        {":path": {"exact": "1"}},
        'spec.http[0].match[0].headers[":path"]',
        "pseudo-header",
    ),
    (
        "spec.http[0].match[0].headers",
        {"trace-bin": {"exact": "1"}},
        "spec.http[0].match[0].headers.trace-bin",
        "binary",
    ),
    (
        "spec.http[0].match[0].headers",
        {"a b": {"exact": "1"}},
        'spec.http[0].match[0].headers["a b"]',
        "not a header name",
    ),
    (
        "spec.http[0].match[0].headers.x-canary",
        {},
        "spec.http[0].match[0].headers.x-canary",
        "needs one of exact, prefix, regex or present",
    ),
    (
        "spec.http[0].match[0].headers.x-canary",
        {"exact": "a", "regex": "a"},
        "spec.http[0].match[0].headers.x-canary",
        "exact and regex cannot be used together",
    ),
    (
        "spec.http[0].match[0].headers.x-canary",
        {"exact": True},
        "spec.http[0].match[0].headers.x-canary.exact",
        "must be a string, got the boolean true (quote it",
    ),
    (
        "spec.http[0].match[0].headers.x-canary",
        {"present": False},
        "spec.http[0].match[0].headers.x-canary.present",
        "must be true",
    ),
    (
        "spec.http[0].match[0].headers.x-canary",
        {"regex": "[a-"},
        "spec.http[0].match[0].headers.x-canary.regex",
        '=regex "[a-" does not compile: unterminated character set at position 0',
    ),
    (
        "spec.http[0].match[0].headers.x-canary",
        {"regex": "a" * 2000},
        "spec.http[0].match[0].headers.x-canary.regex",
        "longer than 1024",
    ),
    # route destinations and weights
    ("spec.http[2].route[0].weight", 80, "spec.http[2].route", "=weights sum to 90, must be 100"),
    ("spec.http[2].route[1].weight", 20, "spec.http[2].route", "=weights sum to 110, must be 100"),
    (
        "spec.http[2].route[1].weight",
        DELETE,
        "spec.http[2].route[1].weight",
        "required when a route has more than one destination",
    ),
    ("spec.http[2].route[0].weight", -10, "spec.http[2].route[0].weight", "=must be at least 0, got -10"),
    ("spec.http[2].route[0].weight", 101, "spec.http[2].route[0].weight", "must be at most 100"),
    (
        "spec.http[2].route[0].weight",
        90.0,
        "spec.http[2].route[0].weight",
        "must be an integer, got the number 90.0",
    ),
    ("spec.http[2].route[0].weight", "90", "spec.http[2].route[0].weight", "must be an integer"),
    ("spec.http[3].route[0].weight", 50, "spec.http[3].route", "=weights sum to 50, must be 100"),
    (
        "spec.http[2].route[1].destination.subset",
        "v1",
        "spec.http[2].route[1].destination",
        "same destination as [0]",
    ),
    ("spec.http[0].route[0].destination", DELETE, "spec.http[0].route[0].destination", "=required"),
    ("spec.http[0].route[0].destination.host", DELETE, "spec.http[0].route[0].destination.host", "=required"),
    (
        "spec.http[0].route[0].destination.host",
        "Users",
        "spec.http[0].route[0].destination.host",
        "not a service name",
    ),
    (
        "spec.http[0].route[0].destination.subset",
        "V2",
        "spec.http[0].route[0].destination.subset",
        "not a valid name",
    ),
    (
        "spec.http[0].route[0].destination.port",
        {"number": 0},
        "spec.http[0].route[0].destination.port.number",
        "at least 1",
    ),
    (
        "spec.http[0].route[0].destination.port",
        {"number": 70000},
        "spec.http[0].route[0].destination.port.number",
        "at most 65535",
    ),
    (
        "spec.http[0].route[0].destination.port",
        {"name": "grpc"},
        "spec.http[0].route[0].destination.port.name",
        "field not supported",
    ),
    (
        "spec.http[0].route[0].headers",
        {},
        "spec.http[0].route[0].headers",
        "header manipulation is not supported",
    ),
    # timeout and retries
    ("spec.http[2].timeout", 2, "spec.http[2].timeout", 'must be a duration string such as "1.5s"'),
    ("spec.http[2].timeout", "2", "spec.http[2].timeout", '"2" is not a duration'),
    ("spec.http[2].timeout", "2 s", "spec.http[2].timeout", "is not a duration"),
    ("spec.http[2].timeout", "-1s", "spec.http[2].timeout", "is not a duration"),
    ("spec.http[2].timeout", "0s", "spec.http[2].timeout", '=must be at least 1ms, got "0s"'),
    ("spec.http[2].timeout", "0.1ms", "spec.http[2].timeout", "finer than a millisecond"),
    ("spec.http[2].timeout", "25h", "spec.http[2].timeout", '=must be at most 24h, got "25h"'),
    ("spec.http[2].retries.attempts", -1, "spec.http[2].retries.attempts", "at least 0"),
    (
        "spec.http[2].retries.attempts",
        True,
        "spec.http[2].retries.attempts",
        "must be an integer, got the boolean true",
    ),
    ("spec.http[2].retries.perTryTimeout", "fast", "spec.http[2].retries.perTryTimeout", "is not a duration"),
    (
        "spec.http[2].retries.retryOn",
        "5xx",
        "spec.http[2].retries.retryOn",
        '"5xx" is an HTTP retry condition',
    ),
    (
        "spec.http[2].retries.retryOn",
        "unavailable,connect-failure",
        "spec.http[2].retries.retryOn",
        "HTTP retry condition",
    ),
    (
        "spec.http[2].retries.retryOn",
        "unavailable,not-found",
        "spec.http[2].retries.retryOn",
        '"not-found" is not a supported retry condition',
    ),
    (
        "spec.http[2].retries.retryOn",
        "unavailable,,cancelled",
        "spec.http[2].retries.retryOn",
        "empty condition",
    ),
    ("spec.http[2].retries.retryOn", "", "spec.http[2].retries.retryOn", "must not be empty"),
    ("spec.http[2].retries.backoff", "1s", "spec.http[2].retries.backoff", "field not supported"),
    # fault
    ("spec.http[2].fault", {}, "spec.http[2].fault", "needs at least one of delay or abort"),
    ("spec.http[2].fault.delay.fixedDelay", DELETE, "spec.http[2].fault.delay.fixedDelay", "=required"),
    ("spec.http[2].fault.delay.percentage", DELETE, "spec.http[2].fault.delay.percentage", "=required"),
    (
        "spec.http[2].fault.delay.percentage",
        {"value": 101},
        "spec.http[2].fault.delay.percentage.value",
        "at most 100",
    ),
    (
        "spec.http[2].fault.delay.percentage",
        {"value": -1},
        "spec.http[2].fault.delay.percentage.value",
        "at least 0",
    ),
    (
        "spec.http[2].fault.delay.percentage",
        {"value": float("nan")},
        "spec.http[2].fault.delay.percentage.value",
        "finite",
    ),
    (
        "spec.http[2].fault.delay.percentage",
        {"value": "50%"},
        "spec.http[2].fault.delay.percentage.value",
        "must be a number",
    ),
    ("spec.http[2].fault.delay.percentage", {}, "spec.http[2].fault.delay.percentage.value", "=required"),
    ("spec.http[2].fault.delay.percent", 10, "spec.http[2].fault.delay.percent", "use percentage"),
    (
        "spec.http[2].fault.delay.exponentialDelay",
        "1s",
        "spec.http[2].fault.delay.exponentialDelay",
        "field not supported",
    ),
    ("spec.http[2].fault.abort.grpcStatus", DELETE, "spec.http[2].fault.abort.grpcStatus", "=required"),
    (
        "spec.http[2].fault.abort.grpcStatus",
        "unavailable",
        "spec.http[2].fault.abort.grpcStatus",
        "capitals: UNAVAILABLE",
    ),
    (
        "spec.http[2].fault.abort.grpcStatus",
        "BROKEN",
        "spec.http[2].fault.abort.grpcStatus",
        "must be a gRPC status name",
    ),
    ("spec.http[2].fault.abort.grpcStatus", 17, "spec.http[2].fault.abort.grpcStatus", "1..16"),
    ("spec.http[2].fault.abort.grpcStatus", "14", "spec.http[2].fault.abort.grpcStatus", "as a number"),
    (
        "spec.http[2].fault.abort.grpcStatus",
        "OK",
        "spec.http[2].fault.abort.grpcStatus",
        "OK is not an error",
    ),
    ("spec.http[2].fault.abort.grpcStatus", 0, "spec.http[2].fault.abort.grpcStatus", "OK is not an error"),
    (
        "spec.http[2].fault.abort.httpStatus",
        503,
        "spec.http[2].fault.abort.httpStatus",
        "aborts use grpcStatus",
    ),
    (
        "spec.http[2].fault.abort.percentage",
        {"value": 200},
        "spec.http[2].fault.abort.percentage.value",
        "at most 100",
    ),
    # mirror
    ("spec.http[2].mirror", DELETE, "spec.http[2].mirrorPercentage", "needs mirror"),
    ("spec.http[2].mirror.host", DELETE, "spec.http[2].mirror.host", "=required"),
    ("spec.http[2].mirror.subset", "V3", "spec.http[2].mirror.subset", "not a valid name"),
    ("spec.http[2].mirror.host", "users/v3", "spec.http[2].mirror.host", "not a service name"),
    ("spec.http[2].mirror.port", {"number": 1}, "spec.http[2].mirror.port", "field not supported"),
    ("spec.http[2].mirrorPercentage", {"value": 150}, "spec.http[2].mirrorPercentage.value", "at most 100"),
    ("spec.http[2].mirrorPercentage", 5, "spec.http[2].mirrorPercentage", "must be a mapping"),
    ("spec.http[2].mirrorPercent", 5, "spec.http[2].mirrorPercent", "use mirrorPercentage"),
    ("spec.http[2].mirrors", [], "spec.http[2].mirrors", "field not supported"),
]


@pytest.mark.parametrize(
    ("field", "value", "path", "reason"), BAD, ids=[f"{c[0]}={c[1]!r}"[:80] for c in BAD]
)
def test_invalid(field: str, value: Any, path: str, reason: str) -> None:
    check_error(edit(BASE, field, value), path, reason, label="VirtualService users")


def test_the_weights_message_from_the_issue() -> None:
    spec = {
        "hosts": ["users"],
        "http": [
            {
                "route": [
                    {"destination": {"host": "users", "subset": "v1"}, "weight": 80},
                    {"destination": {"host": "users", "subset": "v2"}, "weight": 10},
                ]
            }
        ],
    }
    with pytest.raises(Exception) as info:
        validate(doc("VirtualService", spec))
    assert str(info.value) == "VirtualService users: spec.http[0].route: weights sum to 90, must be 100"


def test_unsupported_field_names_what_is_supported() -> None:
    check_error(
        edit(BASE, "spec.http[2].retries.retryRemoteLocalities", True),
        "spec.http[2].retries.retryRemoteLocalities",
        "=field not supported (supported here: attempts, perTryTimeout, retryOn)",
    )


def test_helpers_for_the_sidecar() -> None:
    assert retry_on_codes("unavailable, DEADLINE_EXCEEDED,Cancelled") == {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "CANCELLED",
    }
    assert grpc_status_code("UNAVAILABLE") == 14
    assert grpc_status_code(4) == 4
