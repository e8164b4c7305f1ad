"""``meshctl control-plane``: run the control plane (discovery, the CA, policy API over gRPC and REST).

Exit codes: 0 stopped by SIGTERM or SIGINT, 1 could not start (port in use, bad data dir),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from control_plane.ca import DEFAULT_LEAF_TTL
from control_plane.discovery import DEFAULT_DEBOUNCE, DEFAULT_WARMUP
from control_plane.server import (
    DEFAULT_CA_POLL,
    DEFAULT_GRPC_LISTEN,
    DEFAULT_HTTP_LISTEN,
    ControlPlane,
    serve,
)
from meshctl.cmd_token import parse_ttl


def _milliseconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of milliseconds") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"must be 0..60000 ms, got {value}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "control-plane",
        help="run the control plane",
        description="Run the control plane: sidecar discovery (config push) and the policy API over "
        "gRPC (with reflection and health) and REST (with an OpenAPI document at /openapi.json).",
    )
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="the store and the API signing key live here"
    )
    parser.add_argument(
        "--grpc-listen", default=DEFAULT_GRPC_LISTEN, help="gRPC address (default: %(default)s; port 0: any)"
    )
    parser.add_argument(
        "--http-listen", default=DEFAULT_HTTP_LISTEN, help="REST address (default: %(default)s; port 0: any)"
    )
    parser.add_argument(
        "--ready-file", type=Path, help='once serving, write {"grpc": ..., "http": ..., "pid": ...} here'
    )
    parser.add_argument(
        "--debounce-ms",
        type=_milliseconds,
        default=round(DEFAULT_DEBOUNCE * 1000),
        help="gather changes this long before pushing them to sidecars (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-ms",
        type=_milliseconds,
        default=round(DEFAULT_WARMUP * 1000),
        help="after start, let sidecars reconnect this long before pushing (default: %(default)s)",
    )
    parser.add_argument(
        "--ca-dir",
        type=Path,
        help="the mesh CA (ca.pem, ca-key.pem, optional root.pem and extra-roots.pem; from "
        "`meshctl certs init` or your own intermediate) (default: DATA_DIR/ca, a root made on first start)",
    )
    parser.add_argument(
        "--trust-domain",
        help="SPIFFE trust domain of issued certificates (default: the CA's, else cluster.local)",
    )
    parser.add_argument(
        "--cert-ttl",
        type=parse_ttl,
        default=DEFAULT_LEAF_TTL,
        help="lifetime of workload certificates, e.g. 24h, 30m, 60s (default: 24h; sidecars renew at half)",
    )
    parser.add_argument(
        "--ca-poll-ms",
        type=_milliseconds,
        default=round(DEFAULT_CA_POLL * 1000),
        help="look for changes in the CA directory (a root rotation) this often (default: %(default)s)",
    )
    parser.add_argument(
        "--require-identity",
        action="store_true",
        help="refuse sidecars that do not prove their identity with a certificate from this CA",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    control_plane = ControlPlane(
        args.data_dir,
        grpc_listen=args.grpc_listen,
        http_listen=args.http_listen,
        debounce=args.debounce_ms / 1000,
        warmup=args.warmup_ms / 1000,
        ca_dir=args.ca_dir,
        trust_domain=args.trust_domain,
        cert_ttl=args.cert_ttl,
        ca_poll=max(args.ca_poll_ms, 1) / 1000,
        require_identity=args.require_identity,
    )
    # The default asyncio loop, by choice: grpc.aio runs on uvloop too (the sidecar does that, see
    # docs/discovery.md), but the control plane's traffic is almost all grpc.aio, which measured a
    # little faster on the default loop (~130 µs a stream round trip against ~150 µs on uvloop), and
    # it has no data path for uvloop's faster transports to speed up.
    return asyncio.run(serve(control_plane, ready_file=args.ready_file))
