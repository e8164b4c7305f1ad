"""python -m services.users: run one users instance."""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Sequence

from services.common.server import add_common_arguments, configure_logging, instance_from_args, serve
from services.users.servicer import register
from services.users.store import UserStore


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.users", description=__doc__)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    instance = instance_from_args("users", args)
    return asyncio.run(
        serve(
            instance=instance,
            listen=args.listen,
            register=functools.partial(register, store=UserStore(), instance=instance),
            ready_file=args.ready_file,
            grace=args.grace,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
