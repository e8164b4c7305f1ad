"""``meshctl token create``: mint a bearer token for the control plane's APIs, or a join token.

The token is signed with the control plane's API signing key (``api-signing-key.pem`` in its data
dir, created when the control plane first starts) and printed on stdout, so
``export MESHCTL_TOKEN=$(meshctl token create --role admin --data-dir DIR)`` works. With
``--service`` (and ``--namespace``) instead of ``--role`` it is a join token: what a sidecar shows
the CA to get its first certificate, for that workload's identity only (control_plane.join_tokens).

Exit codes: 0 printed, 1 no usable signing key, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from control_plane.auth import (
    DEFAULT_TTL,
    MAX_TTL,
    Clock,
    Role,
    SigningKeyError,
    load_signing_key,
    mint_token,
    utc_now,
)
from control_plane.join_tokens import mint_join_token
from control_plane.policy.fields import parse_duration


def parse_ttl(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``7d`` or a sum of them (``1h30m``); positive, at most MAX_TTL."""
    try:
        seconds = parse_duration(text.strip(), days=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    ttl = timedelta(seconds=seconds)
    if ttl <= timedelta(0):
        raise argparse.ArgumentTypeError("the ttl must be positive")
    if ttl > MAX_TTL:
        raise argparse.ArgumentTypeError(
            f"the ttl must be at most {MAX_TTL.days}d, got {text!r}; mint a new token when it expires"
        )
    return ttl


def register(subparsers: Any, *, clock: Clock = utc_now) -> None:
    token = subparsers.add_parser(
        "token",
        help="mint API bearer tokens (--role) and sidecar join tokens (--service)",
        description=(
            "Mint JWTs: API bearer tokens for the control plane's REST and gRPC APIs (--role), "
            "and join tokens a sidecar trades for its first certificate (--service)."
        ),
    )
    sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = sub.add_parser(
        "create",
        help="mint a token and print it",
        description="Sign a token with the control plane's API signing key and print it on stdout.",
    )
    kind = create.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--role",
        choices=[role.value for role in Role],
        help="an API token: read (get, list, history, status) or admin (everything)",
    )
    kind.add_argument(
        "--service",
        help="a join token for this service's sidecars: their first certificate names this service",
    )
    create.add_argument(
        "--namespace", default="default", help="the join token's namespace (default: %(default)s)"
    )
    create.add_argument(
        "--ttl",
        type=parse_ttl,
        default=DEFAULT_TTL,
        help=f"how long the token is valid, e.g. 30m, 1h, 7d; at most {MAX_TTL.days}d (default: 1h)",
    )
    create.add_argument("--subject", default="meshctl", help="who an API token is for (default: %(default)s)")
    create.add_argument(
        "--data-dir", required=True, type=Path, help="the control plane's data dir (holds the signing key)"
    )
    create.set_defaults(run=functools.partial(_run_create, clock=clock))


def _run_create(args: argparse.Namespace, *, clock: Clock) -> int:
    if not args.subject:
        print("meshctl token create: --subject must not be empty", file=sys.stderr)
        return 2
    try:
        key = load_signing_key(args.data_dir)
    except SigningKeyError as exc:
        print(f"meshctl token create: {exc}", file=sys.stderr)
        return 1
    if args.service is not None:
        try:
            token = mint_join_token(
                key, namespace=args.namespace, service=args.service, ttl=args.ttl, now=clock()
            )
        except ValueError as exc:
            print(f"meshctl token create: {exc}", file=sys.stderr)
            return 2
    else:
        token = mint_token(key, role=Role(args.role), subject=args.subject, ttl=args.ttl, now=clock())
    print(token)
    return 0
