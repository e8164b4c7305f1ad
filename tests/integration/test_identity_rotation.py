"""Certificates from the control plane's CA, with real processes and steady traffic:

    the test ──► sidecar "client" (outbound) ──mTLS──► sidecar "echo" (inbound) ──► echo app
                        ▲ join token, CSRs, trust bundle ▲
                        └────────── meshctl control-plane ┘

- Bootstrap and rotation: the sidecars start with a join token and no certificate files; with an
  8-second certificate lifetime each renews at about half-life, again and again, while 20 calls a
  second go through them: none fails across several rotations.
- Root rotation: old + new roots pushed, the CA switched to the new root (every sidecar re-issued),
  the old root dropped — no restart, no failed call.
- A sidecar whose join token the CA refuses exits saying so, with no certificate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority
from control_plane.ca_source import EXTRA_ROOTS_FILE, fingerprint
from control_plane.pki import cert_pem, write_atomic
from meshctl import procs
from meshctl.demo.mesh import child_env
from tests.support.control_plane_mesh import (
    REPO,
    TRUST_DOMAIN,
    ControlPlaneProcess,
    RunningSidecar,
    SidecarSpec,
    logs_note,
    start_sidecars,
    wait_all_ready,
)
from tests.support.mesh import http_get, wait_for
from tests.support.traffic import CALLS_PER_SECOND, Traffic

pytestmark = pytest.mark.integration

START_TIMEOUT = 60.0
ROTATIONS = 3
CERT_TTL = "8s"


@dataclass
class Mesh:
    control_plane: ControlPlaneProcess
    echo: RunningSidecar
    client: RunningSidecar

    @property
    def sidecars(self) -> list[RunningSidecar]:
        return [self.echo, self.client]


def certs(sidecar: RunningSidecar) -> dict[str, Any]:
    status, body = http_get(sidecar.admin, "/certs")
    assert status == 200, body
    info: dict[str, Any] = json.loads(body)
    return info


@contextmanager
def running_mesh(tmp_path: Path, *extra_args: str) -> Iterator[Mesh]:
    with procs.ProcessGroup(grace=10.0, log_dir=tmp_path / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, tmp_path)
            control_plane.start(warmup_ms=0, extra_args=extra_args)
            echo, client = start_sidecars(
                group,
                tmp_path,
                control_plane.join_token,
                control_plane.grpc,
                [
                    SidecarSpec("echo", dependencies=["echo"], app_kind="echo"),
                    SidecarSpec("client", dependencies=["echo"]),
                ],
                timeout=START_TIMEOUT,
            )
            wait_all_ready([echo, client], START_TIMEOUT)
            yield Mesh(control_plane, echo, client)
        except BaseException as exc:
            exc.add_note(logs_note(tmp_path))
            raise


@contextmanager
def steady_traffic(mesh: Mesh) -> Iterator[Traffic]:
    traffic = Traffic(mesh.client.outbound)
    traffic.start()
    try:
        traffic.wait_for_calls(CALLS_PER_SECOND, 20)
        yield traffic
    finally:
        traffic.stop()


def test_bootstrap_with_a_join_token_and_rotation_under_traffic(tmp_path: Path) -> None:
    with running_mesh(tmp_path, "--cert-ttl", CERT_TTL) as mesh:
        for sidecar in mesh.sidecars:
            cert = certs(sidecar)["certificate"]
            assert cert["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{sidecar.spec.service}"
            assert cert["serial"] and cert["not_after"] and cert["seconds_left"] <= 8
            assert sidecar.config_dump()["identity"] == cert["spiffe_id"]
        data_dir = mesh.control_plane.data_dir
        written = [p for p in tmp_path.rglob("*.pem") if data_dir not in p.parents]
        assert written == []  # no workload key or certificate file, anywhere
        with steady_traffic(mesh) as traffic:
            wait_for(
                lambda: all(certs(s)["certificate"]["renewals"] >= ROTATIONS for s in mesh.sidecars),
                60,
                f"{ROTATIONS} renewals on each sidecar",
            )
            traffic.wait_for_calls(traffic.count() + CALLS_PER_SECOND, 10)
        assert traffic.failed() == [], traffic.failed()[:5]
        assert traffic.count() > ROTATIONS * 2 * CALLS_PER_SECOND

        # The control plane saw each renewal proven on the discovery stream: status shows it.
        def status_matches() -> bool:
            listed = {s["nodeId"]: s for s in mesh.control_plane.status_json()["sidecars"]}
            return all(
                listed[s.config_dump()["discovery"]["node_id"]]["identityVerified"]
                and listed[s.config_dump()["discovery"]["node_id"]]["certificateSerial"]
                == certs(s)["certificate"]["serial"]
                for s in mesh.sidecars
            )

        wait_for(status_matches, 30, "meshctl status to show each sidecar's current certificate")
        wide = mesh.control_plane.ok("status", "-o", "wide")
        assert "CERT SERIAL" in wide and f"spiffe://{TRUST_DOMAIN}/ns/default/sa/echo" in wide, wide
        _, metrics = http_get(mesh.control_plane.http, "/metrics")
        signed = [
            line
            for line in metrics.decode().splitlines()
            if line.startswith("grpc_mesh_ca_csrs_signed_total")
        ]
        assert signed and float(signed[0].split()[-1]) >= 2 * (ROTATIONS + 1), signed
        _, sidecar_metrics = http_get(mesh.client.admin, "/metrics")
        assert b"grpc_mesh_certificate_expiry_seconds" in sidecar_metrics


def _install_ca(source: Path, directory: Path) -> None:
    """Put the CA saved in `source` in place of the one in `directory`, each file atomically."""
    write_atomic(directory / CA_KEY_FILE, (source / CA_KEY_FILE).read_bytes(), mode=0o600)
    write_atomic(directory / CA_CERT_FILE, (source / CA_CERT_FILE).read_bytes(), mode=0o644)


def test_root_rotation_under_traffic(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    old = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    old.save(ca_dir)
    new = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    new.save(tmp_path / "new-ca")
    old_root, new_root = old.certificate, new.certificate
    with running_mesh(tmp_path, "--ca-dir", str(ca_dir), "--ca-poll-ms", "200") as mesh:

        def bundles() -> list[list[str]]:
            return [[c["serial"] for c in certs(s)["trust_bundle"]["certificates"]] for s in mesh.sidecars]

        def issuers() -> set[str]:
            return {certs(s)["certificate"]["issuer_sha256"] for s in mesh.sidecars}

        assert issuers() == {fingerprint(old_root)}
        with steady_traffic(mesh) as traffic:
            # 1. Trust both roots.
            write_atomic(ca_dir / EXTRA_ROOTS_FILE, cert_pem(new_root), mode=0o644)
            both = [format(old_root.serial_number, "x"), format(new_root.serial_number, "x")]
            wait_for(lambda: bundles() == [both, both], 30, "old + new roots pushed to both sidecars")
            # 2. Sign with the new root (the old one stays trusted): every sidecar re-issues.
            write_atomic(ca_dir / EXTRA_ROOTS_FILE, cert_pem(old_root), mode=0o644)
            _install_ca(tmp_path / "new-ca", ca_dir)
            wait_for(
                lambda: issuers() == {fingerprint(new_root)}, 30, "both sidecars re-issued by the new root"
            )
            traffic.wait_for_calls(traffic.count() + CALLS_PER_SECOND, 10)
            # 3. Drop the old root.
            write_atomic(ca_dir / EXTRA_ROOTS_FILE, b"", mode=0o644)
            only_new = [format(new_root.serial_number, "x")]
            wait_for(lambda: bundles() == [only_new, only_new], 30, "the old root dropped on both sidecars")
            traffic.wait_for_calls(traffic.count() + 2 * CALLS_PER_SECOND, 10)
        assert traffic.failed() == [], traffic.failed()[:5]


def test_a_refused_join_token_stops_the_sidecar_with_the_reason(tmp_path: Path) -> None:
    with procs.ProcessGroup(grace=10.0, log_dir=tmp_path / "logs") as group:
        control_plane = ControlPlaneProcess(group, tmp_path)
        control_plane.start(warmup_ms=0)
        token_file = tmp_path / "bad.token"
        token_file.write_text("not-a-token\n")
        config = {
            "service": "client",
            "listeners": {"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "control_plane": control_plane.grpc,
            "join_token": {"file": str(token_file)},
        }
        config_file = tmp_path / "client.yaml"
        config_file.write_text(yaml.safe_dump(config))
        argv = procs.python_argv(
            "-m", "meshctl", "sidecar", "--config", str(config_file), "--ready-file", str(tmp_path / "r.json")
        )
        proc = group.start("client", argv, tmp_path / "r.json", env=child_env(), cwd=REPO)
        wait_for(proc.has_exited, 30, "the sidecar to exit")
        assert group.stop(proc) == 1
        log = procs.log_tail(tmp_path / "logs" / "client.log")
        assert "no certificate" in log and "refused the join token: UNAUTHENTICATED" in log, log
