"""`meshctl sidecar`: run one sidecar beside a service instance."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sidecar",
        help="run a sidecar (static config, or config pushed by a control plane)",
        description="Run a sidecar: an mTLS inbound listener in front of the local app, a plaintext "
        "loopback outbound listener for the app's calls, an admin HTTP port and the gRPC admin service "
        "(mesh.v1.SidecarAdmin, with reflection; listeners.admin_grpc). With control_plane: "
        "in the config, the services it calls and its policies come from the control plane.",
    )
    parser.add_argument("--config", required=True, type=Path, help="sidecar config (YAML)")
    parser.add_argument(
        "--ready-file", type=Path, help="write the bound addresses here as JSON once listening"
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.set_defaults(run=run)


def _write_ready(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def _serve(args: argparse.Namespace) -> int:
    from sidecar.app import Sidecar
    from sidecar.config import ConfigError, load_config
    from sidecar.identity import CertificateUnavailable

    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"meshctl sidecar: invalid config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        sidecar = Sidecar(config)
    except (ValueError, OSError) as exc:  # e.g. a certificate without a usable SPIFFE ID
        print(f"meshctl sidecar: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        addresses = await sidecar.start()
    except OSError as exc:
        print(f"meshctl sidecar: cannot listen: {exc}", file=sys.stderr)
        await sidecar.stop(0)
        return 1
    except CertificateUnavailable as exc:
        print(f"meshctl sidecar: no certificate: {exc}", file=sys.stderr)
        await sidecar.stop(0)
        return 1
    listening = ", ".join(f"{name} {address}" for name, address in addresses.items())
    print(f"meshctl sidecar: {config.service} listening: {listening}", file=sys.stderr, flush=True)
    if config.control_plane is not None:
        print(
            f"meshctl sidecar: {config.service} ({sidecar.node_id}) takes its config from the control "
            f"plane at {config.control_plane}; ready once the first snapshot is applied",
            file=sys.stderr,
            flush=True,
        )
    if args.ready_file:
        _write_ready(args.ready_file, {**addresses, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sidecar.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(args))
    code: int = uvloop.run(_serve(args))
    return code
