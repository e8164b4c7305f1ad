"""CA benchmark: certificate signing requests signed per second by the control plane.

    .venv/bin/python -m bench.ca [--csrs 3000] [--concurrency 32]    # or: make bench-ca

Two measurements, side by side:

- **over gRPC**: a real `meshctl control-plane` process; this process sends `--csrs` CSRs (keys
  and CSRs made beforehand, so only the CA's work is timed) over one grpc.aio channel,
  `--concurrency` at a time, each with a join token. Reports CSRs/s (wall clock) and the control
  plane's CPU per CSR.
- **in process**: `Issuer.issue` called in a loop (token check, CSR check, signing), no gRPC: the
  ceiling the server's work allows on one core.

Prints a markdown report and writes it to bench/results/ca.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from mesh.v1 import ca_pb2, ca_pb2_grpc

from bench import procstat
from bench.run import machine_description
from control_plane.auth import TokenVerifier, load_or_create_signing_key, load_signing_key
from control_plane.ca_service import Issuer
from control_plane.ca_source import CaDirectory
from control_plane.join_tokens import mint_join_token
from control_plane.pki import build_csr, generate_private_key
from control_plane.spiffe import SpiffeId
from meshctl import procs
from meshctl.demo.mesh import child_env

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ca.md"
GOAL_PER_SECOND = 1000
IDENTITY = SpiffeId("cluster.local", "default", "users")


def make_csrs(count: int) -> list[str]:
    return [build_csr(generate_private_key(), IDENTITY).decode() for _ in range(count)]


async def over_grpc(target: str, token: str, csrs: list[str], concurrency: int) -> tuple[float, int]:
    """(seconds, failures) to get every CSR signed, `concurrency` in flight."""
    failures = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ca_pb2_grpc.CertificateServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")]
        await stub.CreateCertificate(ca_pb2.CreateCertificateRequest(csr=csrs[0]), metadata=metadata)
        queue = list(reversed(csrs))

        async def worker() -> None:
            nonlocal failures
            while queue:
                csr = queue.pop()
                try:
                    await stub.CreateCertificate(ca_pb2.CreateCertificateRequest(csr=csr), metadata=metadata)
                except grpc.aio.AioRpcError:
                    failures += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, failures


def in_process(data_dir: Path, csrs: list[str]) -> float:
    key = load_or_create_signing_key(data_dir)
    ca = CaDirectory.open(data_dir / "ca", create_trust_domain="cluster.local", now=datetime.now(UTC))
    issuer = Issuer(lambda: ca.trust, TokenVerifier(key.public_key()), trust_domain="cluster.local")
    token = f"Bearer {mint_join_token(key, namespace='default', service='users', now=datetime.now(UTC))}"
    start = time.perf_counter()
    for csr in csrs:
        issuer.issue(ca_pb2.CreateCertificateRequest(csr=csr), token)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csrs", type=int, default=3000, help="CSRs to send (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="CSRs in flight (default 32)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.csrs < 1 or args.concurrency < 1:
        parser.error("--csrs and --concurrency must be positive")
    work_dir = Path(tempfile.mkdtemp(prefix="grpc-mesh-bench-ca-"))
    try:
        print(f"bench: making {args.csrs} keys and CSRs", flush=True)
        csrs = make_csrs(args.csrs)
        with procs.ProcessGroup(grace=5.0, log_dir=work_dir / "logs") as group:
            ready_file = work_dir / "ready.json"
            argv_cp = procs.python_argv(
                "-m", "meshctl", "control-plane", "--data-dir", str(work_dir / "data"),
                "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                "--ready-file", str(ready_file), "--warmup-ms", "0", "--log-level", "WARNING",
            )  # fmt: skip
            ready = group.start("control-plane", argv_cp, ready_file, env=child_env()).wait_ready(30.0)
            pid = int(ready["pid"])
            token = mint_join_token(
                load_signing_key(work_dir / "data"),
                namespace="default",
                service="users",
                now=datetime.now(UTC),
            )
            cpu0 = procstat.cpu_seconds(pid)
            seconds, failures = asyncio.run(over_grpc(str(ready["grpc"]), token, csrs, args.concurrency))
            cpu = procstat.cpu_seconds(pid) - cpu0
        local_seconds = in_process(work_dir / "local", csrs)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    rate, local_rate = args.csrs / seconds, args.csrs / local_seconds
    verdict = "meets" if rate >= GOAL_PER_SECOND else "misses"
    text = "\n".join(
        [
            "# CA: CSRs signed per second",
            "",
            f"{datetime.now(UTC).isoformat(timespec='seconds')}, {machine_description()}, "
            f"Python {platform.python_version()}, grpcio {grpc.__version__}",
            "",
            "| path | CSRs | CSRs/s | CA CPU per CSR |",
            "|---|---|---|---|",
            f"| gRPC, {args.concurrency} in flight, control plane process | {args.csrs} | {rate:,.0f} | "
            f"{cpu / args.csrs * 1e6:,.0f} µs |",
            f"| in process (`Issuer.issue`, no gRPC) | {args.csrs} | {local_rate:,.0f} | "
            f"{local_seconds / args.csrs * 1e6:,.0f} µs |",
            "",
            f"Goal: ≥ {GOAL_PER_SECOND} CSRs/s over gRPC — {verdict} it. Failed requests: {failures}.",
            "",
        ]
    )
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
