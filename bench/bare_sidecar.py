"""`meshctl sidecar` without the per-call Prometheus metrics: the baseline of bench.observability.

    python -m bench.bare_sidecar --config FILE --ready-file FILE

A sidecar always records its calls' Istio metrics; this runs the same sidecar with its relays
given no CallMetrics, so the benchmark can show what metrics cost. Not for use outside bench/.
"""

from __future__ import annotations

import sys
from typing import Any

import sidecar.app
from meshctl import cli
from sidecar.relay import Relay


class _RelayWithoutMetrics(Relay):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["metrics"] = None
        super().__init__(*args, **kwargs)


def main() -> int:
    sidecar.app.Relay = _RelayWithoutMetrics  # type: ignore[attr-defined]
    return cli.main(["sidecar", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
