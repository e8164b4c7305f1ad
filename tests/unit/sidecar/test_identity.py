"""The sidecar's CA-issued identity without processes: its config, the renewal schedule, what a
pushed trust bundle and signing CA do, and how pushed roots are checked."""

from __future__ import annotations

import random
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mesh.v1 import discovery_pb2

from control_plane.ca import CertificateAuthority, SpiffeId, build_csr, generate_private_key
from control_plane.ca_source import fingerprint
from control_plane.pki import cert_pem
from sidecar.ca_client import Issued
from sidecar.config import ConfigError, JoinToken, parse_config
from sidecar.discovery import SnapshotRejected, from_proto
from sidecar.identity import WorkloadIdentity, renew_delay

NOW = datetime(2030, 3, 4, 5, 6, 7, tzinfo=UTC)
USERS = SpiffeId("cluster.local", "default", "users")


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def issued_by(ca: CertificateAuthority, ttl: timedelta = timedelta(hours=24)) -> Issued:
    key = generate_private_key()
    cert = ca.sign_csr(build_csr(key, USERS), USERS, ttl, NOW).certificate
    return Issued(key, (cert, *ca.roots), tuple(ca.roots), USERS, NOW)


# -- config ------------------------------------------------------------------------------------


def cp_config(**extra: object) -> dict[str, object]:
    return {
        "service": "users",
        "listeners": {"inbound": "127.0.0.1:0"},
        "app": "127.0.0.1:50051",
        "control_plane": "127.0.0.1:15010",
        **extra,
    }


def test_a_join_token_file_replaces_tls_files(tmp_path: Path) -> None:
    (tmp_path / "users.token").write_text("abc.def.ghi\n")
    config = parse_config(cp_config(join_token={"file": "users.token"}), tmp_path)
    assert config.tls is None and config.join_token == JoinToken(file=tmp_path / "users.token")
    assert config.join_token.read({}) == "abc.def.ghi"


def test_a_join_token_from_the_environment() -> None:
    config = parse_config(cp_config(join_token={"env": "MESH_JOIN_TOKEN"}))
    assert config.join_token is not None
    assert config.join_token.read({"MESH_JOIN_TOKEN": " tok "}) == "tok"
    with pytest.raises(ConfigError, match=r"join_token\.env: the join token is empty or missing"):
        config.join_token.read({})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (cp_config(join_token={}), "join_token: give exactly one of file"),
        (cp_config(join_token={"file": "a", "env": "B"}), "join_token: give exactly one of file"),
        (cp_config(join_token={"file": "missing.token"}), "join_token.file: file not found"),
        (cp_config(join_token={"env": "A=B"}), "join_token.env: expected an environment variable name"),
        (cp_config(join_token={"url": "x"}), "join_token.url: unknown field"),
        (cp_config(), "tls: required when listeners.inbound is set .*, or join_token"),
        (
            {"service": "users", "join_token": {"env": "T"}},
            "join_token: only used with control_plane",
        ),
    ],
)
def test_join_token_config_errors_name_the_field(
    raw: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, tmp_path)


def test_join_token_and_tls_files_are_exclusive(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    tls = {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"}
    with pytest.raises(ConfigError, match="tls: not allowed with join_token"):
        parse_config(cp_config(join_token={"env": "T"}, tls=tls), tmp_path)


# -- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize(("draw", "fraction"), [(0.0, 0.4), (0.5, 0.5), (1.0, 0.6)])
def test_renewal_at_half_the_remaining_life_with_jitter(draw: float, fraction: float) -> None:
    issued = issued_by(CertificateAuthority.create("cluster.local", now=NOW - timedelta(days=1)))
    delay = renew_delay(issued, NOW, FixedRandom(draw), 0.2)
    assert delay == pytest.approx(24 * 3600 * fraction)
    later = renew_delay(issued, NOW + timedelta(hours=20), FixedRandom(0.5), 0.2)
    assert later == pytest.approx(2 * 3600)
    assert renew_delay(issued, NOW + timedelta(days=2), FixedRandom(0.5), 0.2) == 0.0


# -- pushed trust -------------------------------------------------------------------------------


def test_pushed_roots_and_a_new_signing_ca() -> None:
    old = CertificateAuthority.create("cluster.local", now=NOW - timedelta(days=1))
    new = CertificateAuthority.create("cluster.local", now=NOW - timedelta(days=1))
    changes: list[tuple[ssl.SSLContext, ssl.SSLContext]] = []
    identity = WorkloadIdentity(
        "127.0.0.1:1",
        "token",
        lambda server, client: changes.append((server, client)),
        clock=lambda: NOW,
        rand=FixedRandom(0.5),
    )
    identity._install(issued_by(old))  # what bootstrap does with the CA's answer
    assert len(changes) == 1 and identity.roots == tuple(old.roots)
    scheduled = identity.renew_at
    assert scheduled == NOW + timedelta(hours=12)

    old_pem, new_pem = cert_pem(old.certificate).decode(), cert_pem(new.certificate).decode()
    identity.set_trust((old_pem,), fingerprint(old.certificate))  # nothing new
    assert len(changes) == 1 and identity.renew_at == scheduled
    identity.set_trust((old_pem, new_pem), fingerprint(old.certificate))  # a second root
    assert len(changes) == 2 and identity.roots == (old.certificate, new.certificate)
    assert identity.renew_at == scheduled
    identity.set_trust((old_pem, new_pem), fingerprint(new.certificate))  # the CA switched
    assert len(changes) == 2
    assert identity.renew_at == NOW + timedelta(seconds=0.5 * identity.resign_jitter)


def _snapshot(**fields: object) -> discovery_pb2.Snapshot:
    return discovery_pb2.Snapshot(version="1-abc", **fields)  # type: ignore[arg-type]


def test_pushed_roots_are_checked() -> None:
    ca = CertificateAuthority.create("cluster.local", now=NOW)
    root = cert_pem(ca.certificate).decode()
    good = from_proto(_snapshot(trust_roots=[root], signing_ca=fingerprint(ca.certificate)))
    assert good.trust_roots == (root,) and good.signing_ca == fingerprint(ca.certificate)
    with pytest.raises(SnapshotRejected, match=r"trust_roots\[1\]: not a PEM certificate"):
        from_proto(_snapshot(trust_roots=[root, "junk"]))
    leaf = cert_pem(issued_by(ca).leaf).decode()
    with pytest.raises(SnapshotRejected, match=r"trust_roots\[0\]: not a CA certificate"):
        from_proto(_snapshot(trust_roots=[leaf]))
    with pytest.raises(SnapshotRejected, match="signing_ca: expected a SHA-256 fingerprint"):
        from_proto(_snapshot(signing_ca="ABC"))
