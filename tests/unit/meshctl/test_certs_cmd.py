"""`meshctl certs init | issue | show`, driven through a parser built here with a fixed clock."""

from __future__ import annotations

import argparse
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from control_plane.ca import CertificateAuthority, SpiffeId
from control_plane.spiffe import spiffe_id_of
from meshctl import cmd_certs

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def run(*argv: str, now: datetime = NOW) -> int:
    parser = argparse.ArgumentParser(prog="meshctl")
    cmd_certs.register(parser.add_subparsers(dest="command", required=True), clock=lambda: now)
    args = parser.parse_args(["certs", *argv])
    code: int = args.run(args)
    return code


def test_init_creates_a_root_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    assert run("init", "--dir", str(certs), "--trust-domain", "prod.mesh", "--days", "30") == 0
    assert stat.S_IMODE((certs / "ca-key.pem").stat().st_mode) == 0o600
    ca = CertificateAuthority.load(certs)
    assert ca.trust_domain == "prod.mesh"
    assert ca.certificate.not_valid_after_utc == NOW + timedelta(days=30)
    out = capsys.readouterr().out
    assert "prod.mesh" in out and str(certs / "ca.pem") in out


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("init", "--dir", str(tmp_path)) == 0
    before = (tmp_path / "ca.pem").read_bytes()
    capsys.readouterr()
    assert run("init", "--dir", str(tmp_path)) == 1
    captured = capsys.readouterr()
    assert "a CA already exists" in captured.err and "--force" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert (tmp_path / "ca.pem").read_bytes() == before
    assert run("init", "--dir", str(tmp_path), "--force") == 0
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_init_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("init", "--dir", str(tmp_path), "--trust-domain", "Bad_Domain") == 2
    assert "lower-case" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run("init", "--dir", str(tmp_path), "--days", "0")
    assert info.value.code == 2
    assert "must be positive" in capsys.readouterr().err
    assert not (tmp_path / "ca.pem").exists()


def test_issue_writes_workload_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    run("init", "--dir", str(certs))
    capsys.readouterr()
    out = tmp_path / "users"
    assert (
        run(
            "issue",
            "--service",
            "users",
            "--namespace",
            "shop",
            "--dir",
            str(certs),
            "--out",
            str(out),
            "--hours",
            "6",
        )
        == 0
    )
    (leaf,) = x509.load_pem_x509_certificates((out / "users.pem").read_bytes())
    assert spiffe_id_of(leaf) == SpiffeId("cluster.local", "shop", "users")
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=6)
    assert stat.S_IMODE((out / "users-key.pem").stat().st_mode) == 0o600
    assert (out / "ca.pem").read_bytes() == (certs / "ca.pem").read_bytes()
    assert "spiffe://cluster.local/ns/shop/sa/users" in capsys.readouterr().out


def test_issue_defaults_to_the_ca_dir(tmp_path: Path) -> None:
    run("init", "--dir", str(tmp_path), "--trust-domain", "dev.mesh")
    assert run("issue", "--service", "orders", "--dir", str(tmp_path)) == 0
    (leaf,) = x509.load_pem_x509_certificates((tmp_path / "orders.pem").read_bytes())
    assert str(spiffe_id_of(leaf)) == "spiffe://dev.mesh/ns/default/sa/orders"
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)


def test_issue_without_a_ca_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("issue", "--service", "users", "--dir", str(tmp_path / "missing")) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "meshctl certs init" in err and "Traceback" not in err


def test_issue_rejects_a_bad_service_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("init", "--dir", str(tmp_path))
    capsys.readouterr()
    assert run("issue", "--service", "users/admin", "--dir", str(tmp_path)) == 2
    assert "service 'users/admin' may only contain" in capsys.readouterr().err
    assert not (tmp_path / "users" / "admin.pem").exists()


def test_issue_for_a_foreign_trust_domain_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("init", "--dir", str(tmp_path))
    capsys.readouterr()
    assert run("issue", "--service", "users", "--dir", str(tmp_path), "--trust-domain", "other.mesh") == 1
    assert "signs for trust domain 'cluster.local'" in capsys.readouterr().err


def test_show_prints_serial_san_and_validity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("init", "--dir", str(tmp_path))
    run("issue", "--service", "users", "--dir", str(tmp_path))
    capsys.readouterr()
    assert run("show", str(tmp_path / "users.pem"), now=NOW + timedelta(hours=1)) == 0
    out = capsys.readouterr().out
    (leaf,) = x509.load_pem_x509_certificates((tmp_path / "users.pem").read_bytes())
    assert f"serial:     {leaf.serial_number:x}" in out
    assert "SAN:        URI:spiffe://cluster.local/ns/default/sa/users" in out
    assert f"not before: {(NOW - timedelta(minutes=1)).isoformat()}" in out
    assert f"not after:  {(NOW + timedelta(hours=24)).isoformat()}  (valid)" in out
    assert "CA:         no" in out


def test_show_marks_expired_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("init", "--dir", str(tmp_path))
    capsys.readouterr()
    assert run("show", str(tmp_path / "ca.pem"), now=NOW + timedelta(days=4000)) == 0
    out = capsys.readouterr().out
    assert "(expired)" in out and "CA:         yes" in out and "URI:spiffe://cluster.local" in out


def test_show_reports_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", str(tmp_path / "nope.pem")) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert run("show", str(tmp_path / "junk.pem")) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshctl certs show: error:") and "no readable PEM certificate" in err


def test_registered_in_the_meshctl_cli() -> None:
    try:
        from meshctl.cli import build_parser
    except ImportError as exc:  # the other subcommands may not exist yet
        pytest.skip(f"meshctl.cli not importable yet: {exc}")
    args = build_parser().parse_args(["certs", "show", "x.pem"])
    assert callable(args.run)
