"""python -m services.orders: run one orders instance.

It reaches the users service at --users-target (its local sidecar's outbound port, plaintext),
with :authority set to --users-authority so the sidecar knows which service the call is for.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Sequence

from services.common.server import add_common_arguments, configure_logging, instance_from_args, serve
from services.orders.servicer import register
from services.orders.store import OrderStore
from services.orders.users_client import UsersClient, users_channel


async def run(args: argparse.Namespace) -> int:
    instance = instance_from_args("orders", args)
    async with users_channel(args.users_target, args.users_authority) as channel:
        return await serve(
            instance=instance,
            listen=args.listen,
            register=functools.partial(
                register, store=OrderStore(), users=UsersClient(channel), instance=instance
            ),
            ready_file=args.ready_file,
            grace=args.grace,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.orders",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--users-target",
        required=True,
        help="host:port for calls to users: the local sidecar's outbound port (plaintext)",
    )
    parser.add_argument(
        "--users-authority", default="users", help=":authority of calls to users (default: users)"
    )
    args = parser.parse_args(argv)
    configure_logging()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
