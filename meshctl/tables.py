"""Plain-text tables and times for meshctl's listings: aligned columns that stay readable when
piped to grep or awk, and ages ("3m") the way operators read them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], gap: int = 3) -> str:
    """Left-aligned columns, each as wide as its widest cell; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *(list(r) for r in rows)]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append((" " * gap).join(cells).rstrip())
    return "\n".join(lines)


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp from the API (protobuf JSON), or None when absent or unreadable."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def format_age(text: str, now: datetime) -> str:
    """How long ago a timestamp was: 45s, 12m, 3h, 2d ("-" when unknown)."""
    then = parse_time(text)
    if then is None:
        return "-"
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_time(text: str) -> str:
    """A timestamp as UTC to the second (`2026-11-22 12:27:21Z`), "-" when unknown."""
    then = parse_time(text)
    if then is None:
        return text or "-"
    return then.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_duration(seconds: float) -> str:
    """30s, 1m30s, 0.5s: for messages about timeouts."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if rest else f"{int(minutes)}m"
