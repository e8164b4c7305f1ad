"""Field-walking helpers shared by the policy kinds.

A *check* is a function ``check(value, path) -> canonical value`` that raises :class:`Invalid`
naming the field path and the reason when ``value`` is not acceptable. Checks compose:
:func:`fields` validates a mapping with one check per supported field (any other field is an
error, never ignored), :func:`list_of` and :func:`map_of` validate collections, and the scalar
checks validate strings, numbers, durations, regexes and names.

The value a check returns is plain JSON (dict, list, str, int, float, bool) with the same shape
and field names as its input: canonical resources are what the user wrote, checked, so a diff of
two revisions shows the user's own words. ``null`` is treated like an absent field and dropped.

Paths read like the YAML: ``spec.http[0].route[1].weight``; a map key that is not a plain
identifier is quoted: ``spec.subsets[0].labels["app.kubernetes.io/version"]``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from decimal import Decimal
from typing import Any

Check = Callable[[object, str], Any]

INT32_MAX = 2**31 - 1
MAX_REGEX_LENGTH = 1024
MIN_DURATION_SECONDS = 0.001
MAX_DURATION_SECONDS = 24 * 3600.0


class Invalid(Exception):
    """A value that fails a check: ``path`` names the field, ``reason`` says what is wrong.
    The document-level API turns it into a ValidationError that also names the document."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# ---------------------------------------------------------------------------------------------
# Paths and descriptions


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MAX_KEY_IN_PATH = 80


def child(path: str, key: object) -> str:
    """The path of field ``key`` inside ``path``."""
    if isinstance(key, str) and len(key) <= _MAX_KEY_IN_PATH and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    text = key if isinstance(key, str) else repr(key)
    if len(text) > _MAX_KEY_IN_PATH:
        text = text[:_MAX_KEY_IN_PATH] + "..."
    return f"{path}[{json.dumps(text)}]"


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def describe(value: object) -> str:
    """How a value reads in an error message: 'the number 2', 'a list', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:60] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def quoted(value: str) -> str:
    """A user's string in a message: JSON-quoted, cut short when long."""
    return json.dumps(value if len(value) <= 100 else value[:100] + "...")


def one_of_words(names: Iterable[str], conjunction: str = "or") -> str:
    """'a', 'a or b', 'a, b or c'."""
    items = list(names)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _type_error(expected: str, value: object) -> str:
    reason = f"must be {expected}, got {describe(value)}"
    scalar = value is not None and not isinstance(value, str | list | tuple | Mapping)
    if expected.startswith("a string") and scalar:
        reason += " (quote it in YAML to make it a string)"
    if expected.startswith("a list") and isinstance(value, str | Mapping):
        reason += " (write a YAML list: one '- ' item per line, or [a, b])"
    return reason


# ---------------------------------------------------------------------------------------------
# Structures


def as_mapping(value: object, path: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise Invalid(path, _type_error("a mapping (fields and values)", value))
    return value


def fields(
    value: object,
    path: str,
    checks: Mapping[str, Check],
    *,
    required: Collection[str] = (),
    exactly_one: Iterable[Collection[str]] = (),
    at_least_one: Iterable[Collection[str]] = (),
    at_most_one: Iterable[Collection[str]] = (),
    hints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Validate a mapping whose fields are exactly those in ``checks`` (input order kept).

    Any other field is refused as "field not supported" (with ``hints[field]`` when there is a
    better thing to say, and always the list of fields supported here). Null values count as
    absent. ``required`` fields must be present; each group in ``exactly_one`` must have exactly
    one present field, ``at_least_one`` at least one, ``at_most_one`` at most one.
    """
    obj = as_mapping(value, path)
    for key in obj:
        if not isinstance(key, str):
            raise Invalid(path, f"field names must be strings, got {describe(key)}")
        if key not in checks:
            reason = "field not supported"
            hint = (hints or {}).get(key)
            if hint:
                reason += f"; {hint}"
            reason += f" (supported here: {', '.join(checks)})"
            raise Invalid(child(path, key), reason)
    out: dict[str, Any] = {}
    for key, raw in obj.items():
        if raw is not None:
            out[key] = checks[key](raw, child(path, key))
    for key in required:
        if key not in out:
            raise Invalid(child(path, key), "required")
    for group in exactly_one:
        present = [k for k in group if k in out]
        if not present:
            raise Invalid(path, f"needs one of {one_of_words(group)}")
        if len(present) > 1:
            raise Invalid(
                path,
                f"{one_of_words(present, 'and')} cannot be used together; give exactly one of "
                f"{one_of_words(group)}",
            )
    for group in at_least_one:
        if not any(k in out for k in group):
            raise Invalid(path, f"needs at least one of {one_of_words(group)}")
    for group in at_most_one:
        present = [k for k in group if k in out]
        if len(present) > 1:
            raise Invalid(path, f"{one_of_words(present, 'and')} cannot be used together")
    return out


def list_of(check: Check, *, min_items: int = 0, empty_hint: str = "", unique: bool = False) -> Check:
    """A list whose items each pass ``check``. ``unique`` refuses repeated (canonical) items."""

    def run(value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid(path, _type_error("a list", value))
        if len(value) < min_items:
            reason = "must not be empty" if min_items == 1 else f"needs at least {min_items} items"
            raise Invalid(path, reason + (f" ({empty_hint})" if empty_hint else ""))
        out: list[Any] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(value):
            canonical = check(raw, item(path, index))
            if unique:
                marker = json.dumps(canonical, sort_keys=True)
                if marker in seen:
                    raise Invalid(
                        item(path, index), f"{describe(canonical)} is listed twice (also at [{seen[marker]}])"
                    )
                seen[marker] = index
            out.append(canonical)
        return out

    return run


def map_of(key_check: Check, value_check: Check, *, min_items: int = 0, empty_hint: str = "") -> Check:
    """A mapping with free-form keys (e.g. label names) checked by ``key_check``."""

    def run(value: object, path: str) -> dict[str, Any]:
        obj = as_mapping(value, path)
        if len(obj) < min_items:
            raise Invalid(path, "must not be empty" + (f" ({empty_hint})" if empty_hint else ""))
        out: dict[str, Any] = {}
        for key, raw in obj.items():
            if not isinstance(key, str):
                raise Invalid(path, f"keys must be strings, got {describe(key)}")
            key_check(key, child(path, key))
            out[key] = value_check(raw, child(path, key))
        return out

    return run


# ---------------------------------------------------------------------------------------------
# Scalars


def string(value: object, path: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise Invalid(path, _type_error("a string", value))
    if not value:
        raise Invalid(path, "must not be empty")
    return value


def any_string(value: object, path: str) -> str:
    """A string, possibly empty."""
    if not isinstance(value, str):
        raise Invalid(path, _type_error("a string", value))
    return value


def boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(path, _type_error("true or false", value))
    return value


def integer(minimum: int = 0, maximum: int = INT32_MAX) -> Check:
    def run(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(path, _type_error("an integer", value))
        if value < minimum:
            raise Invalid(path, f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise Invalid(path, f"must be at most {maximum}, got {value}")
        return value

    return run


def number(minimum: float, maximum: float, *, exclusive_minimum: bool = False, note: str = "") -> Check:
    """An int or float (kept as given) within the bounds; NaN and infinities are refused."""

    def run(value: object, path: str) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(path, _type_error("a number", value))
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(path, f"must be a finite number, got {value!r}")
        suffix = f" ({note})" if note else ""
        if value < minimum or (exclusive_minimum and value == minimum):
            bound = "greater than" if exclusive_minimum else "at least"
            raise Invalid(path, f"must be {bound} {minimum:g}, got {value!r}{suffix}")
        if value > maximum:
            raise Invalid(path, f"must be at most {maximum:g}, got {value!r}{suffix}")
        return value

    return run


percentage = number(0, 100)
"""A percentage: a number from 0 to 100 (fractions allowed, e.g. 0.5)."""


def percent_object(value: object, path: str) -> dict[str, Any]:
    """Istio's ``Percent`` message: ``{value: 0..100}``."""
    return fields(value, path, {"value": percentage}, required=("value",))


def enum(*choices: str, hints: Mapping[str, str] | None = None) -> Check:
    def run(value: object, path: str) -> str:
        if not isinstance(value, str):
            raise Invalid(path, _type_error(f"one of {one_of_words(choices)}", value))
        if value not in choices:
            reason = f"must be one of {one_of_words(choices)}, got {quoted(value)}"
            hint = (hints or {}).get(value)
            raise Invalid(path, f"{reason}; {hint}" if hint else reason)
        return value

    return run


def regex(value: object, path: str) -> str:
    """A regular expression in Python ``re`` syntax; it must compile. Like Istio's (RE2) regexes,
    it is meant to match the whole value (``re.fullmatch``)."""
    text = string(value, path)
    if len(text) > MAX_REGEX_LENGTH:
        raise Invalid(path, f"regex is longer than {MAX_REGEX_LENGTH} characters")
    try:
        re.compile(text)
    except re.error as err:
        raise Invalid(
            path, f"regex {quoted(text)} does not compile: {err.msg} at position {err.pos}"
        ) from None
    return text


# ---------------------------------------------------------------------------------------------
# Durations

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|d|h|m|s)")
_UNIT_MS = {
    "ms": Decimal(1),
    "s": Decimal(1000),
    "m": Decimal(60_000),
    "h": Decimal(3_600_000),
    "d": Decimal(86_400_000),
}


def parse_duration(text: str, *, days: bool = False) -> float:
    """Seconds in a duration string: one or more ``<number><unit>`` parts with unit ms, s, m or h
    (and d, a day, when ``days``), e.g. ``"1.5s"``, ``"200ms"``, ``"1m"``, ``"1h30m"``. Whole
    milliseconds only. Raises ValueError saying why when the text is not such a duration.

    The one duration parser: policy documents' durations, and meshctl's ``--timeout`` and
    ``--ttl`` (with days)."""
    parts = _DURATION_PART.findall(text)
    if (
        not parts
        or "".join(amount + unit for amount, unit in parts) != text
        or (not days and any(unit == "d" for _, unit in parts))
    ):
        units = "ms, s, m, h or d" if days else "ms, s, m or h"
        raise ValueError(
            f"{quoted(text)} is not a duration; write a number and a unit ({units}), "
            'e.g. "1.5s", "200ms", "1m" or "1h"'
        )
    millis = sum((Decimal(amount) * _UNIT_MS[unit] for amount, unit in parts), Decimal(0))
    if millis != millis.to_integral_value():
        raise ValueError(f"{quoted(text)} is finer than a millisecond")
    return float(millis) / 1000


def duration(minimum: float = MIN_DURATION_SECONDS, maximum: float = MAX_DURATION_SECONDS) -> Check:
    """A duration string (see :func:`parse_duration`) between the bounds, kept as written."""

    def run(value: object, path: str) -> str:
        if not isinstance(value, str):
            raise Invalid(path, _type_error('a duration string such as "1.5s" or "200ms"', value))
        try:
            seconds = parse_duration(value)
        except ValueError as err:
            raise Invalid(path, str(err)) from None
        if seconds < minimum:
            raise Invalid(path, f"must be at least {_show_seconds(minimum)}, got {quoted(value)}")
        if seconds > maximum:
            raise Invalid(path, f"must be at most {_show_seconds(maximum)}, got {quoted(value)}")
        return value

    return run


def _show_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{seconds:g}s"


# ---------------------------------------------------------------------------------------------
# Names

_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_HEADER_NAME = re.compile(r"[a-z0-9_.-]+")


def dns_label(value: object, path: str) -> str:
    """A DNS-1123 label: lower-case letters, digits and '-', starting and ending alphanumeric,
    at most 63 characters (Kubernetes names and namespaces, subset names)."""
    text = string(value, path)
    if _DNS_LABEL.fullmatch(text) is None:
        raise Invalid(
            path,
            f"{quoted(text)} is not a valid name: use at most 63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return text


def service_host(value: object, path: str) -> str:
    """A service name: a DNS-1123 subdomain such as ``users`` or ``users.default.svc``."""
    text = string(value, path)
    if "*" in text:
        raise Invalid(path, f"wildcard hosts are not supported; name a service, got {quoted(text)}")
    if len(text) > 253 or not all(_DNS_LABEL.fullmatch(part) for part in text.split(".")):
        raise Invalid(
            path,
            f"{quoted(text)} is not a service name: use lower-case letters, digits, '-' and '.', "
            "e.g. users or users.default.svc",
        )
    return text


def header_name(value: object, path: str) -> str:
    """A gRPC metadata key that can be matched: lower-case letters, digits, '-', '_', '.';
    not a pseudo-header and not a binary ('-bin') key."""
    text = string(value, path)
    if text.startswith(":"):
        raise Invalid(
            path, f"pseudo-header {quoted(text)} cannot be matched (match the gRPC method with uri)"
        )
    if text != text.lower() and _HEADER_NAME.fullmatch(text.lower()):
        raise Invalid(path, f"header name {quoted(text)} must be lower-case (gRPC metadata keys are)")
    if _HEADER_NAME.fullmatch(text) is None:
        raise Invalid(
            path, f"{quoted(text)} is not a header name: use lower-case letters, digits, '-', '_', '.'"
        )
    if text.endswith("-bin"):
        raise Invalid(path, f"binary header {quoted(text)} cannot be matched (its value is not text)")
    return text


def label_key(value: object, path: str) -> str:
    """A Kubernetes label or annotation key: ``[prefix/]name``."""
    text = string(value, path)
    prefix, slash, name = text.rpartition("/")
    good_prefix = not slash or (
        0 < len(prefix) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in prefix.split("."))
    )
    if not good_prefix or _LABEL_NAME.fullmatch(name) is None:
        raise Invalid(
            path,
            f"{quoted(text)} is not a label key: an optional DNS prefix and '/', then at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    return text


def label_value(value: object, path: str) -> str:
    """A Kubernetes label value: empty, or at most 63 letters, digits, '-', '_', '.'."""
    text = any_string(value, path)
    if text and _LABEL_NAME.fullmatch(text) is None:
        raise Invalid(
            path,
            f"{quoted(text)} is not a label value: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        )
    return text


def labels(*, min_items: int = 0, empty_hint: str = "") -> Check:
    """A label map (key → value), e.g. ``{version: v2}``."""
    return map_of(label_key, label_value, min_items=min_items, empty_hint=empty_hint)


def wildcard(value: object, path: str) -> str:
    """A string that may use '*' as the whole value, a prefix (``*-suffix``) or a suffix (``prefix-*``)."""
    text = string(value, path)
    stars = text.count("*")
    if stars == 0 or text == "*" or (stars == 1 and (text.startswith("*") or text.endswith("*"))):
        return text
    raise Invalid(
        path,
        f"{quoted(text)}: '*' may only be the whole value, a prefix (*-suffix) or a suffix (prefix-*)",
    )


def selector(value: object, path: str) -> dict[str, Any]:
    """A workload selector: ``{matchLabels: {label: value}}``."""
    return fields(
        value,
        path,
        {"matchLabels": labels(min_items=1, empty_hint="omit selector to apply to the whole namespace")},
        required=("matchLabels",),
    )
