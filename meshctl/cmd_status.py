"""``meshctl status``: every sidecar the control plane knows and the config it applied; and the
wait behind ``meshctl apply --wait``: poll until every connected sidecar has applied a store
revision, one has rejected it, or time runs out.

Exit codes: 0 done, 1 the control plane refused or could not be reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from meshctl.api_client import (
    ApiError,
    ConnectionArgumentsError,
    ControlPlaneClient,
    ControlPlaneUnreachable,
    ServerError,
    SidecarList,
    SidecarStatus,
    add_connection_arguments,
    client_from_args,
)
from meshctl.tables import format_age, format_table, format_time

Clock = Callable[[], float]
Sleep = Callable[[float], None]
WallClock = Callable[[], datetime]

POLL_INTERVAL = 0.1


def _utc_now() -> datetime:
    return datetime.now(UTC)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *, now: WallClock = _utc_now
) -> None:
    """Add ``status``; it sets ``run`` to a ``callable(args) -> int``."""
    status = subparsers.add_parser(
        "status",
        help="show every sidecar and the config version it applied",
        description="List every sidecar the control plane knows: service, labels, address, the "
        "config it applied (ACK) or rejected (NACK, with the reason), when it was last seen; with "
        "-o wide also its identity, whether it proved it, and its certificate's serial and expiry.",
    )
    status.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json"),
        default="table",
        help="output format (default: table; wide adds identity and certificate columns)",
    )
    add_connection_arguments(status)
    status.set_defaults(run=functools.partial(_run_status, now=now))


def fail(command: str, error: Exception | str, code: int = 1) -> int:
    """Print `meshctl <command>: error: ...` (with a server error's details) to stderr."""
    print(f"meshctl {command}: error: {error}", file=sys.stderr)
    if isinstance(error, ServerError):
        for line in error.details():
            print(f"  {line}", file=sys.stderr)
        if error.status == 401:
            print("  hint: pass --token or --token-file, or set MESHCTL_TOKEN", file=sys.stderr)
    return code


def _run_status(args: argparse.Namespace, *, now: WallClock) -> int:
    try:
        client = client_from_args(args)
    except ConnectionArgumentsError as exc:
        return fail("status", exc, 2)
    try:
        listing = client.sidecars()
    except ApiError as exc:
        return fail("status", exc)
    if args.output == "json":
        print(json.dumps(_status_json(listing), indent=2))
    else:
        print(render_status(listing, now(), wide=args.output == "wide"))
    return 0


def _sorted(sidecars: Sequence[SidecarStatus]) -> list[SidecarStatus]:
    return sorted(sidecars, key=lambda s: (s.namespace, s.service, s.node_id))


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _state(sidecar: SidecarStatus) -> str:
    if sidecar.state == "NACK":
        return f"NACK: {sidecar.nack_reason}" if sidecar.nack_reason else "NACK"
    return sidecar.state


def _certificate_columns(s: SidecarStatus) -> list[str]:
    return [
        s.identity or "-",
        "yes" if s.identity_verified else "no",
        s.certificate_serial or "-",
        format_time(s.certificate_not_after) if s.certificate_not_after else "-",
    ]


def render_status(listing: SidecarList, now: datetime, *, wide: bool = False) -> str:
    rows = [
        [
            s.service or "-",
            s.namespace or "-",
            s.node_id or "-",
            s.inbound_address or "-",
            _labels(s.labels),
            s.applied_version or "-",
            str(s.applied_revision),
            "yes" if s.connected else "no",
            format_age(s.last_seen, now),
            _state(s),
            *(_certificate_columns(s) if wide else []),
        ]
        for s in _sorted(listing.sidecars)
    ]
    headers: tuple[str, ...] = (
        "SERVICE", "NAMESPACE", "NODE", "ADDRESS", "LABELS", "APPLIED", "REVISION", "CONNECTED",
        "LAST SEEN", "STATE",
    )  # fmt: skip
    if wide:
        headers += ("IDENTITY", "VERIFIED", "CERT SERIAL", "CERT NOT AFTER")
    parts = [format_table(headers, rows)] if rows else []
    parts.append(summary(listing))
    return "\n".join(parts)


def summary(listing: SidecarList) -> str:
    """ "3 sidecars, all on revision 12", or "1 of 3 behind revision 12 (1 NACK)"."""
    revision = listing.store_revision
    connected = [s for s in listing.sidecars if s.connected]
    disconnected = len(listing.sidecars) - len(connected)
    behind = [s for s in connected if s.applied_revision < revision]
    if not connected:
        text = f"no sidecars connected (store revision {revision})"
    elif not behind:
        text = f"{len(connected)} sidecar{'' if len(connected) == 1 else 's'}, all on revision {revision}"
    else:
        nacks = sum(1 for s in behind if s.state == "NACK")
        text = f"{len(behind)} of {len(connected)} behind revision {revision}" + (
            f" ({nacks} NACK)" if nacks else ""
        )
    if disconnected:
        text += f"; {disconnected} disconnected"
    return text


def _status_json(listing: SidecarList) -> dict[str, object]:
    connected = [s for s in listing.sidecars if s.connected]
    return {
        "storeRevision": listing.store_revision,
        "sidecars": [s.to_json() for s in _sorted(listing.sidecars)],
        "summary": {
            "connected": len(connected),
            "behind": sum(1 for s in connected if s.applied_revision < listing.store_revision),
            "disconnected": len(listing.sidecars) - len(connected),
        },
    }


# --- apply --wait ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaitOutcome:
    """How a wait for a revision ended: `rejected` non-empty → some sidecar NACKed it;
    `lagging` non-empty → time ran out with those sidecars behind; both empty → done."""

    revision: int
    sidecars: int  # connected sidecars at the last look
    elapsed: float
    rejected: list[SidecarStatus] = field(default_factory=list)
    lagging: list[SidecarStatus] = field(default_factory=list)
    last_error: str = ""

    @property
    def done(self) -> bool:
        return not self.rejected and not self.lagging and not self.last_error


def wait_for_revision(
    client: ControlPlaneClient,
    revision: int,
    *,
    timeout: float,
    clock: Clock,
    sleep: Sleep,
    interval: float = POLL_INTERVAL,
) -> WaitOutcome:
    """Poll the sidecar list until every connected sidecar's applied revision is at least
    `revision`, a sidecar rejects it, or `timeout` seconds pass.

    A snapshot is the whole config, so a NACK of a snapshot built for `revision` or later means
    the change did not take effect there: a sidecar behind `revision` is a rejection when its
    state is NACK and its sent revision is at least `revision`. An older NACK still showing
    (sent revision below `revision`) is lagging, not a rejection of this change: the snapshot
    with the change may not have reached it yet. Unreachable moments are retried until the
    deadline.
    """
    start = clock()
    deadline = start + timeout
    while True:
        last_error = ""
        try:
            listing = client.sidecars()
        except ControlPlaneUnreachable as exc:
            last_error = str(exc)
            connected: list[SidecarStatus] = []
            lagging: list[SidecarStatus] = []
        else:
            connected = [s for s in listing.sidecars if s.connected]
            lagging = [s for s in connected if s.applied_revision < revision]
            rejected = [s for s in lagging if s.state == "NACK" and s.sent_revision >= revision]
            if rejected:
                return WaitOutcome(revision, len(connected), clock() - start, rejected=_sorted(rejected))
            if not lagging:
                return WaitOutcome(revision, len(connected), clock() - start)
        now = clock()
        if now >= deadline:
            return WaitOutcome(
                revision, len(connected), now - start, lagging=_sorted(lagging), last_error=last_error
            )
        sleep(min(interval, deadline - now))


def describe_lagging(sidecar: SidecarStatus) -> str:
    where = f" at {sidecar.inbound_address}" if sidecar.inbound_address else ""
    return f"{sidecar}{where}: applied revision {sidecar.applied_revision}, {_state(sidecar)}"
