"""meshctl: the grpc-mesh command line. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshctl import (
    cmd_certs,
    cmd_control_plane,
    cmd_demo,
    cmd_policy,
    cmd_sidecar,
    cmd_status,
    cmd_token,
    cmd_top,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl",
        description="grpc-mesh: run sidecars, the control plane and the example mesh; roll out policy; "
        "watch traffic (stat, top); manage certificates and tokens.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        cmd_sidecar, cmd_certs, cmd_demo, cmd_policy, cmd_status, cmd_top, cmd_control_plane, cmd_token,
    ):  # fmt: skip
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
