"""Static sidecar config: YAML becomes typed, frozen values, and every bad input names its field."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import (
    Address,
    ConfigError,
    Endpoint,
    ServiceEntry,
    SidecarConfig,
    TlsFiles,
    load_config,
    parse_config,
)

Raw = dict[str, Any]


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (certs / name).write_text("-----BEGIN PLACEHOLDER-----\n")
    return certs


@pytest.fixture
def full(tls_dir: Path) -> Raw:
    """A config using every supported field."""
    return {
        "service": "orders",
        "namespace": "shop",
        "labels": {"version": "v2", "track": "canary"},
        "listeners": {
            "outbound": "127.0.0.1:15001",
            "inbound": "0.0.0.0:15006",
            "admin": "127.0.0.1:15000",
        },
        "app": "127.0.0.1:50051",
        "tls": {
            "cert": str(tls_dir / "cert.pem"),
            "key": str(tls_dir / "key.pem"),
            "ca": str(tls_dir / "ca.pem"),
        },
        "services": {
            "users": {
                "grpc_services": ["demo.v1.Users", "demo.v1.UserAdmin"],
                "endpoints": [
                    {"address": "10.0.0.7:15006", "labels": {"version": "v1"}},
                    {"address": "[fd00::7]:15006"},
                ],
            },
        },
        "max_message_bytes": 4 << 20,
        "max_concurrent_streams": 100,
        "drain_seconds": 2.5,
        "trust_domain": "example.org",
    }


def test_full_config_parses_into_typed_values(full: Raw, tls_dir: Path) -> None:
    config = parse_config(full)

    assert config == SidecarConfig(
        service="orders",
        namespace="shop",
        labels={"version": "v2", "track": "canary"},
        outbound=Address("127.0.0.1", 15001),
        inbound=Address("0.0.0.0", 15006),
        admin=Address("127.0.0.1", 15000),
        admin_grpc=Address("127.0.0.1", 15004),
        app=Address("127.0.0.1", 50051),
        tls=TlsFiles(tls_dir / "cert.pem", tls_dir / "key.pem", tls_dir / "ca.pem"),
        services={
            "users": ServiceEntry(
                "users",
                ("demo.v1.Users", "demo.v1.UserAdmin"),
                (
                    Endpoint(Address("10.0.0.7", 15006), {"version": "v1"}),
                    Endpoint(Address("fd00::7", 15006), {}),
                ),
            )
        },
        max_message_bytes=4 << 20,
        max_concurrent_streams=100,
        drain_seconds=2.5,
        trust_domain="example.org",
    )
    assert isinstance(config.tls, TlsFiles)
    assert isinstance(config.tls.cert, Path)
    assert isinstance(config.services["users"].grpc_services, tuple)
    assert isinstance(config.services["users"].endpoints, tuple)
    assert str(config.services["users"].endpoints[1].address) == "[fd00::7]:15006"


def test_config_is_frozen(full: Raw) -> None:
    config = parse_config(full)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.service = "users"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.admin.port = 1  # type: ignore[misc]


def test_minimal_config_takes_the_defaults() -> None:
    config = parse_config({"service": "users"})

    assert config.service == "users"
    assert config.namespace == "default"
    assert config.labels == {}
    assert config.outbound is None
    assert config.inbound is None
    assert config.admin == Address("127.0.0.1", 15000)
    assert config.admin_grpc == Address("127.0.0.1", 15004)
    assert config.app is None
    assert config.tls is None
    assert config.services == {}
    assert config.max_message_bytes == 64 << 20
    assert config.max_concurrent_streams == 4096
    assert config.drain_seconds == 10.0
    assert config.trust_domain == "cluster.local"


@pytest.mark.parametrize(
    "outbound, expected",
    [
        ("127.0.0.1:15001", Address("127.0.0.1", 15001)),
        ("127.0.0.2:15001", Address("127.0.0.2", 15001)),
        ("localhost:15001", Address("localhost", 15001)),
        ("[::1]:15001", Address("::1", 15001)),
        ("127.0.0.1:0", Address("127.0.0.1", 0)),  # a listener may ask for an ephemeral port
    ],
)
def test_outbound_listener_on_loopback_is_accepted(outbound: str, expected: Address) -> None:
    config = parse_config({"service": "users", "listeners": {"outbound": outbound}})
    assert config.outbound == expected


def _set(*keys: str | int, value: object) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        node: Any = raw
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def _delete(*keys: str | int) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        node: Any = raw
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


def _both(*mutations: Callable[[Raw], None]) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        for m in mutations:
            m(raw)

    return mutate


BAD = {
    # unknown fields are named, never ignored
    "unknown top-level field": (_set("retries", value={"attempts": 3}), "retries", "not supported"),
    "unknown listener": (
        _set("listeners", "sniffer", value="127.0.0.1:1"),
        "listeners.sniffer",
        "not supported",
    ),
    "unknown tls field": (_set("tls", "password", value="hunter2"), "tls.password", "not supported"),
    "unknown service field": (
        _set("services", "users", "lb", value="ring_hash"),
        "services.users.lb",
        "not supported",
    ),
    "unknown endpoint field": (
        _set("services", "users", "endpoints", 0, "weight", value=3),
        "services.users.endpoints[0].weight",
        "not supported",
    ),
    # the service itself
    "missing service": (_delete("service"), "service", "required"),
    "service not a name": (_set("service", value="order service"), "service", "expected a name"),
    "service not a string": (_set("service", value=7), "service", "expected a name"),
    "namespace not a name": (_set("namespace", value="shop/eu"), "namespace", "expected a name"),
    "trust domain empty": (_set("trust_domain", value=""), "trust_domain", "required"),
    # address forms
    "address without port": (_set("listeners", "admin", value="127.0.0.1"), "listeners.admin", "host:port"),
    "address with empty port": (
        _set("listeners", "admin", value="127.0.0.1:"),
        "listeners.admin",
        "0..65535",
    ),
    "address port too large": (
        _set("listeners", "admin", value="127.0.0.1:99999"),
        "listeners.admin",
        "0..65535",
    ),
    "address port negative": (
        _set("listeners", "admin", value="127.0.0.1:-1"),
        "listeners.admin",
        "0..65535",
    ),
    "address port not a number": (_set("app", value="127.0.0.1:grpc"), "app", "0..65535"),
    "address without host": (
        _set("listeners", "inbound", value=":15006"),
        "listeners.inbound",
        "missing host",
    ),
    "address is an int": (_set("listeners", "inbound", value=15006), "listeners.inbound", "host:port"),
    "address is a list": (_set("app", value=["127.0.0.1", 50051]), "app", "host:port"),
    "endpoint address is null": (
        _set("services", "users", "endpoints", 0, "address", value=None),
        "services.users.endpoints[0].address",
        "host:port",
    ),
    "endpoint port 0": (
        _set("services", "users", "endpoints", 1, "address", value="10.0.0.8:0"),
        "services.users.endpoints[1].address",
        "real port",
    ),
    "endpoint port too large": (
        _set("services", "users", "endpoints", 0, "address", value="10.0.0.7:65536"),
        "services.users.endpoints[0].address",
        "0..65535",
    ),
    # the plaintext outbound listener stays on loopback
    "outbound on all interfaces": (
        _set("listeners", "outbound", value="0.0.0.0:15001"),
        "listeners.outbound",
        "loopback",
    ),
    "outbound on a routable IP": (
        _set("listeners", "outbound", value="10.1.2.3:15001"),
        "listeners.outbound",
        "loopback",
    ),
    "outbound on all IPv6 interfaces": (
        _set("listeners", "outbound", value="[::]:15001"),
        "listeners.outbound",
        "loopback",
    ),
    "outbound on a host name": (
        _set("listeners", "outbound", value="mesh.example.com:15001"),
        "listeners.outbound",
        "loopback",
    ),
    # inbound needs somewhere to go and mutual TLS
    "inbound without app": (_delete("app"), "app", "required"),
    "inbound with null app": (_set("app", value=None), "app", "required"),
    "inbound without tls": (_delete("tls"), "tls", "required"),
    "endpoints without tls": (
        _both(_delete("tls"), _delete("listeners", "inbound")),
        "tls",
        "mutual TLS",
    ),
    # tls files
    "tls file missing": (_set("tls", "key", value="/nonexistent/key.pem"), "tls.key", "file not found"),
    "tls field missing": (_delete("tls", "ca"), "tls.ca", "required"),
    "tls path not a string": (_set("tls", "cert", value=42), "tls.cert", "required"),
    "tls not a mapping": (_set("tls", value="certs/"), "tls", "mapping"),
    # labels
    "label value not a string": (_set("labels", "version", value=2), "labels.version", "strings"),
    "label key not a string": (_set("labels", 3, value="x"), "labels.3", "strings"),
    "labels not a mapping": (_set("labels", value=["v1"]), "labels", "mapping"),
    "endpoint label not a string": (
        _set("services", "users", "endpoints", 0, "labels", "zone", value=["a", "b"]),
        "services.users.endpoints[0].labels.zone",
        "strings",
    ),
    # other shapes
    "listeners not a mapping": (_set("listeners", value="127.0.0.1:15001"), "listeners", "mapping"),
    "grpc_services not a list": (
        _set("services", "users", "grpc_services", value="demo.v1.Users"),
        "services.users.grpc_services",
        "list",
    ),
    "grpc_services with an empty name": (
        _set("services", "users", "grpc_services", value=["demo.v1.Users", ""]),
        "services.users.grpc_services",
        "list",
    ),
    "endpoints not a list": (
        _set("services", "users", "endpoints", value={"address": "10.0.0.7:15006"}),
        "services.users.endpoints",
        "list",
    ),
    "max_message_bytes too small": (_set("max_message_bytes", value=10), "max_message_bytes", ">= 1024"),
    "max_concurrent_streams zero": (
        _set("max_concurrent_streams", value=0),
        "max_concurrent_streams",
        ">= 1",
    ),
    "max_concurrent_streams a bool": (
        _set("max_concurrent_streams", value=True),
        "max_concurrent_streams",
        "integer",
    ),
    "admin_grpc not an address": (
        _set("listeners", "admin_grpc", value="15004"),
        "listeners.admin_grpc",
        "host:port",
    ),
    "admin_grpc default taken by inbound": (
        _set("listeners", "inbound", value="0.0.0.0:15004"),
        "listeners.admin_grpc",
        "admin port + 4 = 15004",
    ),
    "max_concurrent_streams a string": (
        _set("max_concurrent_streams", value="100"),
        "max_concurrent_streams",
        "integer",
    ),
}


@pytest.mark.parametrize("mutate, path, why", BAD.values(), ids=BAD.keys())
def test_bad_config_names_the_field_and_says_why(
    full: Raw, mutate: Callable[[Raw], None], path: str, why: str
) -> None:
    raw = copy.deepcopy(full)
    mutate(raw)

    with pytest.raises(ConfigError) as caught:
        parse_config(raw)

    assert caught.value.path == path
    assert why in caught.value.reason
    assert str(caught.value) == f"{path}: {caught.value.reason}"


def test_admin_grpc_is_set_turned_off_or_follows_an_ephemeral_admin_port() -> None:
    def admin_grpc(listeners: Raw) -> Address | None:
        return parse_config({"service": "users", "listeners": listeners}).admin_grpc

    assert admin_grpc({"admin_grpc": "0.0.0.0:9901"}) == Address("0.0.0.0", 9901)
    assert admin_grpc({"admin_grpc": False}) is None
    assert admin_grpc({"admin": "127.0.0.1:0"}) == Address("127.0.0.1", 0)
    assert admin_grpc({"admin": "[::1]:15020"}) == Address("::1", 15024)
    with pytest.raises(ConfigError, match="65538"):
        admin_grpc({"admin": "127.0.0.1:65534"})


@pytest.mark.parametrize("raw", [["service", "users"], "service: users", 42])
def test_top_level_must_be_a_mapping(raw: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.path == "config"
    assert "mapping" in caught.value.reason


def test_empty_document_reports_the_missing_service() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(None)
    assert caught.value.path == "service"


@pytest.mark.parametrize("address", ["::1", "fd00::7"])
def test_bare_ipv6_address_without_port_is_refused(address: str) -> None:
    # Without brackets the last ':'-part of an IPv6 address is not a port.
    with pytest.raises(ConfigError) as caught:
        parse_config({"service": "users", "listeners": {"admin": address}})
    assert caught.value.path == "listeners.admin"


@pytest.mark.parametrize("drain", ["soon", [10], -1.0])
def test_drain_seconds_must_be_a_non_negative_number(drain: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"service": "users", "drain_seconds": drain})
    assert caught.value.path == "drain_seconds"


def test_drain_seconds_accepts_an_integer() -> None:
    assert parse_config({"service": "users", "drain_seconds": 3}).drain_seconds == 3.0


def _write_certs(directory: Path) -> None:
    directory.mkdir(parents=True)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (directory / name).write_text("-----BEGIN PLACEHOLDER-----\n")


_RELATIVE_TLS = """\
service: users
tls:
  cert: certs/cert.pem
  key: certs/key.pem
  ca: certs/ca.pem
"""


def test_load_config_resolves_relative_tls_paths_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc" / "mesh"
    _write_certs(etc / "certs")
    (etc / "sidecar.yaml").write_text(_RELATIVE_TLS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(etc / "sidecar.yaml")

    assert config.tls == TlsFiles(
        etc / "certs" / "cert.pem", etc / "certs" / "key.pem", etc / "certs" / "ca.pem"
    )


def test_relative_tls_paths_are_not_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_certs(tmp_path / "cwd" / "certs")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "sidecar.yaml").write_text(_RELATIVE_TLS)
    monkeypatch.chdir(tmp_path / "cwd")

    with pytest.raises(ConfigError) as caught:
        load_config(conf / "sidecar.yaml")

    assert caught.value.path == "tls.cert"
    assert "file not found" in caught.value.reason


def test_parse_config_resolves_relative_tls_paths_against_base_dir(tls_dir: Path) -> None:
    raw = {
        "service": "users",
        "tls": {"cert": "certs/cert.pem", "key": "certs/key.pem", "ca": "certs/ca.pem"},
    }
    config = parse_config(raw, tls_dir.parent)
    assert config.tls is not None
    assert config.tls.key == tls_dir / "key.pem"


def test_load_config_reads_a_valid_file(tmp_path: Path) -> None:
    file = tmp_path / "sidecar.yaml"
    file.write_text("service: users\nlisteners:\n  outbound: 127.0.0.1:15001\n")

    config = load_config(file)

    assert config.service == "users"
    assert config.outbound == Address("127.0.0.1", 15001)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("service: users\nlisteners: [127.0.0.1:15001\n")

    with pytest.raises(ConfigError) as caught:
        load_config(file)

    assert caught.value.path == str(file)
    assert "invalid YAML" in caught.value.reason
    assert "broken.yaml" in str(caught.value)


def test_load_config_reports_field_errors_with_field_paths(tmp_path: Path) -> None:
    file = tmp_path / "sidecar.yaml"
    file.write_text("service: users\nlisteners:\n  outbound: 0.0.0.0:15001\n")

    with pytest.raises(ConfigError) as caught:
        load_config(file)

    assert caught.value.path == "listeners.outbound"
