"""The shared checks: durations, numbers, names, paths in messages."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.policy.fields import (
    Invalid,
    child,
    describe,
    duration,
    label_key,
    parse_duration,
    percentage,
    service_host,
    wildcard,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.5s", 1.5),
        ("200ms", 0.2),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2m0.5s", 120.5),
        ("0.001s", 0.001),
        (".5s", 0.5),
        ("10s", 10.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is not a duration"),
        ("5", "is not a duration"),
        ("s", "is not a duration"),
        ("1.5", "is not a duration"),
        ("1d", "is not a duration"),
        ("1us", "is not a duration"),
        ("1 s", "is not a duration"),
        ("1S", "is not a duration"),
        ("-1s", "is not a duration"),
        ("+1s", "is not a duration"),
        ("1e3ms", "is not a duration"),
        ("0.5ms", "finer than a millisecond"),
        ("1.0001s", "finer than a millisecond"),
    ],
)
def test_parse_duration_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


def test_duration_bounds() -> None:
    check = duration(minimum=0.5, maximum=60)
    assert check("500ms", "p") == "500ms"
    assert check("1m", "p") == "1m"
    with pytest.raises(Invalid, match='must be at least 500ms, got "499ms"'):
        check("499ms", "p")
    with pytest.raises(Invalid, match='must be at most 60s, got "61s"'):
        check("61s", "p")


@pytest.mark.parametrize("value", [0, 100, 0.5, 99.99])
def test_percentage(value: float) -> None:
    assert percentage(value, "p") == value


@pytest.mark.parametrize("value", [-0.1, 100.5, float("inf"), float("nan"), True, "5", None])
def test_percentage_refuses(value: Any) -> None:
    with pytest.raises(Invalid):
        percentage(value, "p")


@pytest.mark.parametrize(
    ("path", "key", "expected"),
    [
        ("", "spec", "spec"),
        ("spec", "http", "spec.http"),
        ("spec.headers", "x-canary", "spec.headers.x-canary"),
        ("m.labels", "app.kubernetes.io/name", 'm.labels["app.kubernetes.io/name"]'),
        ("m", 1, 'm["1"]'),
        ("m", "k" * 100, 'm["' + "k" * 80 + '..."]'),
    ],
)
def test_paths(path: str, key: Any, expected: str) -> None:
    assert child(path, key) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "the boolean true"),
        (2, "the number 2"),
        ("a", 'the string "a"'),
        ([], "a list"),
        ({}, "a mapping"),
    ],
)
def test_describe(value: Any, text: str) -> None:
    assert describe(value) == text


@pytest.mark.parametrize("host", ["users", "users.default.svc.cluster.local", "a-1", "1a"])
def test_service_hosts(host: str) -> None:
    assert service_host(host, "h") == host


@pytest.mark.parametrize(
    "host", ["Users", "users.", ".users", "users..x", "-users", "a_b", "a" * 64, "x." * 127 + "x"]
)
def test_bad_service_hosts(host: str) -> None:
    with pytest.raises(Invalid):
        service_host(host, "h")


@pytest.mark.parametrize("key", ["app", "app.kubernetes.io/name", "example.com/My_Key.1"])
def test_label_keys(key: str) -> None:
    assert label_key(key, "k") == key


@pytest.mark.parametrize("key", ["", "/app", "Example.com/app", "a/", "-a", "a" * 64])
def test_bad_label_keys(key: str) -> None:
    with pytest.raises(Invalid):
        label_key(key, "k")


@pytest.mark.parametrize("value", ["*", "a", "*a", "a*", "spiffe://cluster.local/ns/default/sa/*"])
def test_wildcards(value: str) -> None:
    assert wildcard(value, "w") == value


@pytest.mark.parametrize("value", ["**", "*a*", "a*b", "a**"])
def test_bad_wildcards(value: str) -> None:
    with pytest.raises(Invalid):
        wildcard(value, "w")
