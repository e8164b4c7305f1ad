"""Sidecar config with `control_plane:`: services come from the control plane, never from the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Address, ConfigError, parse_config


@pytest.fixture
def raw(tmp_path: Path) -> dict[str, Any]:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("-----BEGIN PLACEHOLDER-----\n")
    return {
        "service": "users",
        "listeners": {"inbound": "127.0.0.1:0", "outbound": "127.0.0.1:0"},
        "app": "127.0.0.1:50051",
        "tls": {"cert": "cert.pem", "key": "key.pem", "ca": "ca.pem"},
        "control_plane": "127.0.0.1:15010",
        "grpc_services": ["demo.v1.Users"],
        "dependencies": ["orders", "payments"],
    }


def test_control_plane_mode_parses(raw: dict[str, Any], tmp_path: Path) -> None:
    config = parse_config(raw, tmp_path)
    assert config.control_plane == Address("127.0.0.1", 15010)
    assert config.grpc_services == ("demo.v1.Users",)
    assert config.dependencies == ("orders", "payments")
    assert config.services == {}


def test_dependencies_and_grpc_services_are_optional(raw: dict[str, Any], tmp_path: Path) -> None:
    del raw["dependencies"], raw["grpc_services"]
    config = parse_config(raw, tmp_path)
    assert config.dependencies == () and config.grpc_services == ()


def test_static_mode_has_no_control_plane(raw: dict[str, Any], tmp_path: Path) -> None:
    for key in ("control_plane", "grpc_services", "dependencies"):
        del raw[key]
    config = parse_config(raw, tmp_path)
    assert config.control_plane is None


@pytest.mark.parametrize(
    "change, path, reason",
    [
        ({"services": {}}, "services", "not allowed with control_plane"),
        (
            {"services": {"orders": {"endpoints": [{"address": "10.0.0.1:15006"}]}}},
            "services",
            "come from the control plane",
        ),
        ({"control_plane": "127.0.0.1"}, "control_plane", "host:port"),
        ({"control_plane": "127.0.0.1:0"}, "control_plane", "real port"),
        ({"grpc_services": "demo.v1.Users"}, "grpc_services", "list of fully-qualified"),
        ({"grpc_services": [""]}, "grpc_services", "list of fully-qualified"),
        ({"dependencies": "orders"}, "dependencies", "list of service names"),
        ({"dependencies": ["orders", "bad name"]}, "dependencies[1]", "expected a name"),
        # The checks the control plane applies to a Hello: refused here, not in a reconnect loop.
        (
            {"grpc_services": ["demo.v1.Users", "demo v1/Users"]},
            "grpc_services[1]",
            "not a gRPC service name",
        ),
        ({"labels": {"": "v1"}}, "labels", "empty label name"),
        ({"tls": None}, "tls", "required"),
    ],
)
def test_bad_control_plane_configs_name_the_field(
    raw: dict[str, Any], tmp_path: Path, change: dict[str, Any], path: str, reason: str
) -> None:
    raw.update(change)
    if raw["tls"] is None:
        del raw["listeners"]["inbound"], raw["tls"]
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, tmp_path)
    assert raised.value.path == path
    assert reason in raised.value.reason


@pytest.mark.parametrize("key, value", [("grpc_services", ["demo.v1.Users"]), ("dependencies", ["orders"])])
def test_discovery_fields_without_a_control_plane_are_refused(
    raw: dict[str, Any], tmp_path: Path, key: str, value: list[str]
) -> None:
    for k in ("control_plane", "grpc_services", "dependencies"):
        del raw[k]
    raw[key] = value
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, tmp_path)
    assert raised.value.path == key
    assert "only used with control_plane" in raised.value.reason
