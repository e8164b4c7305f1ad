"""The sidecar configs under examples/ stay valid: the README runs them as they are."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from sidecar.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*-sidecar.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{p.parent.name}/{p.name}" for p in EXAMPLES])
def test_example_config_is_valid_with_certs_from_meshctl_certs(example: Path, tmp_path: Path) -> None:
    # The layout `meshctl certs init/issue` makes at the repository root: certs/ beside examples/.
    ca = CertificateAuthority.create("cluster.local", now=datetime(2026, 1, 1, tzinfo=UTC))
    for service in ("users", "client"):
        issue_workload_files(
            ca,
            SpiffeId("cluster.local", "default", service),
            tmp_path / "certs",
            now=datetime(2026, 1, 1, tzinfo=UTC),
        )
    copy = tmp_path / "examples" / example.parent.name / example.name
    copy.parent.mkdir(parents=True)
    shutil.copy(example, copy)

    config = load_config(copy)

    if example.parent.name == "ca":  # certificates from the control plane's CA, none on disk
        assert config.tls is None and config.join_token is not None
        assert config.join_token.read({"MESH_JOIN_TOKEN": "a.b.c"}) == "a.b.c"
    else:
        assert config.tls is not None and config.tls.cert.is_file()
    assert config.outbound is not None or config.inbound is not None


def test_examples_exist() -> None:
    assert {f"{p.parent.name}/{p.name}" for p in EXAMPLES} == {
        f"{mode}/{name}-sidecar.yaml"
        for mode in ("static", "control-plane", "ca")
        for name in ("users", "client")
    }
