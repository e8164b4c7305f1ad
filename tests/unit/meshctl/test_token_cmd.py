"""`meshctl token create`, driven through a parser built here with a fixed clock."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.api_errors import Unauthenticated
from control_plane.auth import Principal, Role, TokenVerifier, load_or_create_signing_key
from control_plane.join_tokens import Workload, verify_join_token
from meshctl import cmd_token

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="meshctl")
    cmd_token.register(parser.add_subparsers(dest="command", required=True), clock=lambda: NOW)
    args = parser.parse_args(["token", "create", *argv])
    code: int = args.run(args)
    return code


def test_create_prints_a_token_the_control_plane_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = load_or_create_signing_key(tmp_path)
    assert run("--role", "read", "--ttl", "1h30m", "--subject", "ci", "--data-dir", str(tmp_path)) == 0
    token = capsys.readouterr().out.strip()

    def verify_at(now: datetime) -> Principal:
        return TokenVerifier(key.public_key(), clock=lambda: now).verify(token)

    assert verify_at(NOW) == Principal("ci", Role.READ)
    assert verify_at(NOW + timedelta(minutes=90)) == Principal("ci", Role.READ)
    with pytest.raises(Unauthenticated, match="expired"):
        verify_at(NOW + timedelta(minutes=91))


def test_defaults_are_an_hour_for_meshctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = load_or_create_signing_key(tmp_path)
    assert run("--role", "admin", "--data-dir", str(tmp_path)) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(key.public_key(), clock=lambda: NOW + timedelta(minutes=59))
    assert verifier.verify(token) == Principal("meshctl", Role.ADMIN)


def test_without_a_key_it_says_to_start_the_control_plane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--role", "admin", "--data-dir", str(tmp_path / "nowhere")) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "start the control plane" in captured.err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--role", "root"], "invalid choice: 'root'"),
        (["--role", "read", "--ttl", "soon"], "not a duration"),
        (["--role", "read", "--ttl", "0s"], "must be positive"),
        (["--role", "read", "--ttl", "1h 5m"], "not a duration"),
        (["--role", "read", "--ttl", "31d"], "the ttl must be at most 30d, got '31d'"),
        (["--role", "read", "--ttl", "30d1s"], "the ttl must be at most 30d"),
        (["--role", "read", "--ttl", "1y"], "not a duration"),
    ],
)
def test_bad_arguments_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        run(*argv, "--data-dir", str(tmp_path))
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_empty_subject_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_or_create_signing_key(tmp_path)
    assert run("--role", "read", "--subject", "", "--data-dir", str(tmp_path)) == 2
    assert "--subject" in capsys.readouterr().err


def test_parse_ttl() -> None:
    assert cmd_token.parse_ttl("90s") == timedelta(seconds=90)
    assert cmd_token.parse_ttl("7d") == timedelta(days=7)
    assert cmd_token.parse_ttl("1h30m") == timedelta(minutes=90)
    assert cmd_token.parse_ttl("30d") == timedelta(days=30)
    assert cmd_token.parse_ttl("1.5h") == timedelta(minutes=90)


def test_the_longest_token_is_accepted_by_the_control_plane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = load_or_create_signing_key(tmp_path)
    assert run("--role", "read", "--ttl", "30d", "--data-dir", str(tmp_path)) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(key.public_key(), clock=lambda: NOW + timedelta(days=29))
    assert verifier.verify(token) == Principal("meshctl", Role.READ)


def test_service_mints_a_join_token_for_that_workload_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = load_or_create_signing_key(tmp_path)
    assert run("--service", "users", "--namespace", "shop", "--ttl", "10m", "--data-dir", str(tmp_path)) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(key.public_key(), clock=lambda: NOW + timedelta(minutes=9))
    assert verify_join_token(verifier, f"Bearer {token}") == Workload("shop", "users")
    with pytest.raises(Unauthenticated, match=r"Audience doesn.t match"):
        verifier.verify(token)  # never an API token
    late = TokenVerifier(key.public_key(), clock=lambda: NOW + timedelta(minutes=11))
    with pytest.raises(Unauthenticated, match="expired"):
        verify_join_token(late, f"Bearer {token}")


def test_role_and_service_are_exclusive_and_names_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_or_create_signing_key(tmp_path)
    with pytest.raises(SystemExit):
        run("--role", "admin", "--service", "users", "--data-dir", str(tmp_path))
    assert "not allowed with argument" in capsys.readouterr().err
    assert run("--service", "..", "--data-dir", str(tmp_path)) == 2
    assert "service must not be '.' or '..'" in capsys.readouterr().err
