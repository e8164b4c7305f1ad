"""The sidecar's configuration: YAML → validated, immutable types, in one place.

Two modes. Static (no control plane): the file lists the services this sidecar calls and their
endpoints; it stays useful for tests and for running a sidecar alone. With `control_plane:`, the
services come from the control plane's snapshots instead (and `services:` must be absent); the
file then says what this instance serves (`grpc_services:`) and, optionally, what it calls
(`dependencies:`, default: every service). With a control plane, the certificate comes either
from files (`tls:`) or from the control plane's CA: `join_token: {file: PATH}` or
`join_token: {env: NAME}` names the join token that gets the first one, and `tls:` is then
absent. Errors name the field path and the reason.

`rate_limits:` says where GLOBAL rate limits keep their shared buckets (`redis: host:port`,
`timeout_seconds`, `retry_seconds`); in static mode it can also hold RateLimitPolicies
(`policies: [{name, spec}]`, the spec as `meshctl apply` takes it), enforced on inbound calls.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.retry import RetryLimits
from sidecar.wire_checks import CheckFailed, check_grpc_service, check_labels, check_name

# Invalid configuration: `.path` names the field, `.reason` says why. One class with the checks
# shared with what the control plane accepts (sidecar.wire_checks), so a config the sidecar
# takes is a Hello the control plane takes.
ConfigError = CheckFailed


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, value: object, path: str) -> Address:
        if not isinstance(value, str) or ":" not in value:
            raise ConfigError(path, f"expected 'host:port', got {value!r}")
        host, _, port_text = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ConfigError(path, f"IPv6 addresses need brackets: '[host]:port', got {value!r}")
        if not host:
            raise ConfigError(path, f"missing host in {value!r}")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(path, f"port must be 0..65535, got {port_text!r}")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: Address
    labels: dict[str, str] = field(default_factory=dict)
    identity: str = ""  # its SPIFFE ID, when the control plane says (static configs do not)


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    name: str
    grpc_services: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy resource the control plane pushed (VirtualService, AuthorizationPolicy, ...),
    kept as its parsed spec until the filters that enforce it read it."""

    kind: str
    namespace: str
    name: str
    spec: dict[str, Any]
    resource_version: int = 0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Where GLOBAL rate limits keep their buckets (`rate_limits:` in the file)."""

    redis: Address | None = None  # None: GLOBAL rules always fall back to their failure mode
    timeout_seconds: float = 0.25  # connecting to Redis, and each lease request
    retry_seconds: float = 1.0  # while Redis is unreachable, how often it is tried again
    # Static mode only: RateLimitPolicies from the file (with a control plane, they are pushed).
    policies: tuple[Policy, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinToken:
    """Where the join token is: a file, or an environment variable (read when the sidecar starts)."""

    file: Path | None = None
    env: str | None = None

    def read(self, environ: Mapping[str, str]) -> str:
        """The token; ConfigError naming the field when it is missing or empty."""
        if self.file is not None:
            try:
                token = self.file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    "join_token.file", f"cannot read {self.file}: {exc.strerror or exc}"
                ) from None
            field_path = "join_token.file"
        else:
            assert self.env is not None
            token = environ.get(self.env, "").strip()
            field_path = "join_token.env"
        if not token:
            raise ConfigError(
                field_path, "the join token is empty or missing (meshctl token create --service ...)"
            )
        return token


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    service: str
    namespace: str
    labels: dict[str, str]
    outbound: Address | None
    inbound: Address | None
    admin: Address
    app: Address | None
    tls: TlsFiles | None
    services: dict[str, ServiceEntry]
    max_message_bytes: int = 64 << 20
    max_concurrent_streams: int = 4096
    drain_seconds: float = 10.0
    trust_domain: str = "cluster.local"
    # Where the control plane's discovery service listens. Plaintext for now: identity and mTLS
    # towards the control plane come with the certificate issue (issue 4).
    control_plane: Address | None = None
    grpc_services: tuple[str, ...] = ()  # what the local app serves (sent in the Hello)
    dependencies: tuple[str, ...] = ()  # the services this sidecar calls; empty: every service
    access_log: str | None = None  # "-" (stdout) or a file path; None: no access log
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    # `retry_budget`, `retry_throttling`, `retry_buffer_bytes`
    retries: RetryLimits = field(default_factory=RetryLimits)
    # The gRPC admin service (sidecar.admin_grpc); None: off. Default: the admin host at the admin
    # port + ADMIN_GRPC_OFFSET (port 0 when the admin port is 0).
    admin_grpc: Address | None = None
    join_token: JoinToken | None = None  # with a control plane: certificates from its CA


_TOP_FIELDS = {
    "service",
    "namespace",
    "labels",
    "listeners",
    "app",
    "tls",
    "services",
    "max_message_bytes",
    "max_concurrent_streams",
    "drain_seconds",
    "trust_domain",
    "control_plane",
    "grpc_services",
    "dependencies",
    "access_log",
    "rate_limits",
    "retry_budget",
    "retry_throttling",
    "retry_buffer_bytes",
    "join_token",
}


def _mapping(value: object, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _known(mapping: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}" if path else str(key), "unknown field (not supported)")


def _name(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a name (letters, digits, '-', '_', '.'), got {value!r}")
    return check_name(value, path)


def _labels(value: object, path: str) -> dict[str, str]:
    labels = _mapping(value, path)
    for key, val in labels.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise ConfigError(f"{path}.{key}", "labels must map strings to strings")
    check_labels(labels, path)
    return dict(labels)


def _positive_int(value: object, path: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _non_negative_number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(path, f"expected a number >= 0, got {value!r}")
    return float(value)


def _grpc_services(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ConfigError(path, "expected a list of fully-qualified gRPC service names")
    return tuple(check_grpc_service(s, f"{path}[{i}]") for i, s in enumerate(value))


def _service(name: str, raw: object, path: str) -> ServiceEntry:
    spec = _mapping(raw, path)
    _known(spec, {"grpc_services", "endpoints"}, path)
    grpc_services = _grpc_services(spec.get("grpc_services", []), f"{path}.grpc_services")
    endpoints_raw = spec.get("endpoints", [])
    if not isinstance(endpoints_raw, list):
        raise ConfigError(f"{path}.endpoints", "expected a list")
    endpoints = []
    for i, ep in enumerate(endpoints_raw):
        ep_path = f"{path}.endpoints[{i}]"
        ep_map = _mapping(ep, ep_path)
        _known(ep_map, {"address", "labels"}, ep_path)
        address = Address.parse(ep_map.get("address"), f"{ep_path}.address")
        if address.port == 0:
            raise ConfigError(f"{ep_path}.address", "an endpoint needs a real port, not 0")
        endpoints.append(Endpoint(address, _labels(ep_map.get("labels"), f"{ep_path}.labels")))
    return ServiceEntry(name, grpc_services, tuple(endpoints))


def _check_loopback(address: Address, path: str) -> None:
    try:
        if ipaddress.ip_address(address.host).is_loopback:
            return
    except ValueError:
        if address.host == "localhost":
            return
    raise ConfigError(path, "the plaintext outbound listener must be on a loopback address")


def _access_log(value: object, base_dir: Path) -> str | None:
    if value is None:
        return None
    spec = _mapping(value, "access_log")
    _known(spec, {"path"}, "access_log")
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError("access_log.path", f"expected '-' (stdout) or a file path, got {path!r}")
    if path == "-":
        return path
    file = (base_dir / path) if not Path(path).is_absolute() else Path(path)
    if not file.parent.is_dir():
        raise ConfigError("access_log.path", f"directory not found: {file.parent}")
    if file.is_dir():
        raise ConfigError("access_log.path", f"is a directory: {path}")
    return str(file)


def _positive_number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ConfigError(path, f"expected a number of seconds > 0 and <= 3600, got {value!r}")
    return float(value)


def _rate_limit_policies(value: object, namespace: str) -> tuple[Policy, ...]:
    from control_plane.policy.fields import Invalid
    from control_plane.policy.rate_limit_policy import validate_spec

    if not isinstance(value, list):
        raise ConfigError("rate_limits.policies", "expected a list of {name, spec}")
    policies: list[Policy] = []
    for i, raw in enumerate(value):
        path = f"rate_limits.policies[{i}]"
        entry = _mapping(raw, path)
        _known(entry, {"name", "spec"}, path)
        name = _name(entry.get("name"), f"{path}.name")
        if any(p.name == name for p in policies):
            raise ConfigError(f"{path}.name", f"duplicate policy name {name!r}")
        try:
            spec = validate_spec(entry.get("spec"), f"{path}.spec")
        except Invalid as exc:
            raise ConfigError(exc.path, exc.reason) from None
        policies.append(Policy("RateLimitPolicy", namespace, name, spec))
    return tuple(policies)


def _rate_limits(value: object, namespace: str, static: bool) -> RateLimitSettings:
    spec = _mapping(value, "rate_limits")
    _known(spec, {"redis", "timeout_seconds", "retry_seconds", "policies"}, "rate_limits")
    policies: tuple[Policy, ...] = ()
    if "policies" in spec:
        if not static:
            raise ConfigError(
                "rate_limits.policies", "not allowed with control_plane: RateLimitPolicies are pushed"
            )
        policies = _rate_limit_policies(spec["policies"], namespace)
    redis = None
    if spec.get("redis") is not None:
        redis = Address.parse(spec["redis"], "rate_limits.redis")
        if redis.port == 0:
            raise ConfigError("rate_limits.redis", "needs a real port, not 0")
    return RateLimitSettings(
        redis,
        _positive_number(spec.get("timeout_seconds", 0.25), "rate_limits.timeout_seconds"),
        _positive_number(spec.get("retry_seconds", 1.0), "rate_limits.retry_seconds"),
        policies,
    )


# Where the gRPC admin service listens unless told: the admin port + 4, so 15000 → 15004 (Istio's
# debug port), clear of the outbound (15001) and inbound (15006) ports of the usual layout.
ADMIN_GRPC_OFFSET = 4


def _admin_grpc(value: object, admin: Address, others: tuple[Address | None, ...]) -> Address | None:
    """`listeners.admin_grpc`: host:port, false (off), or absent: the admin port + 4."""
    if value is False:
        return None
    if value is not True:
        return Address.parse(value, "listeners.admin_grpc")
    if admin.port == 0:
        return Address(admin.host, 0)
    port = admin.port + ADMIN_GRPC_OFFSET
    if port > 65535 or any(other is not None and other.port == port for other in others):
        raise ConfigError(
            "listeners.admin_grpc",
            f"the default (admin port + {ADMIN_GRPC_OFFSET} = {port}) is not free among this "
            "sidecar's listeners: set it (host:port), or false to turn it off",
        )
    return Address(admin.host, port)


def _join_token(value: object, base_dir: Path) -> JoinToken:
    spec = _mapping(value, "join_token")
    _known(spec, {"file", "env"}, "join_token")
    if ("file" in spec) == ("env" in spec):
        raise ConfigError("join_token", "give exactly one of file (a path) or env (a variable name)")
    if "file" in spec:
        path = spec["file"]
        if not isinstance(path, str) or not path:
            raise ConfigError("join_token.file", f"expected a file path, got {path!r}")
        file = (base_dir / path) if not Path(path).is_absolute() else Path(path)
        if not file.is_file():
            raise ConfigError("join_token.file", f"file not found: {path}")
        return JoinToken(file=file)
    env = spec["env"]
    if not isinstance(env, str) or not env or "=" in env:
        raise ConfigError("join_token.env", f"expected an environment variable name, got {env!r}")
    return JoinToken(env=env)


def parse_config(raw: object, base_dir: Path = Path()) -> SidecarConfig:
    top = _mapping(raw, "config")
    _known(top, _TOP_FIELDS, "")
    if "service" not in top:
        raise ConfigError("service", "required")
    service = _name(top["service"], "service")
    namespace = _name(top.get("namespace", "default"), "namespace")
    listeners = _mapping(top.get("listeners"), "listeners")
    _known(listeners, {"outbound", "inbound", "admin", "admin_grpc"}, "listeners")
    outbound = inbound = None
    if "outbound" in listeners:
        outbound = Address.parse(listeners["outbound"], "listeners.outbound")
        _check_loopback(outbound, "listeners.outbound")
    if "inbound" in listeners:
        inbound = Address.parse(listeners["inbound"], "listeners.inbound")
    admin = Address.parse(listeners.get("admin", "127.0.0.1:15000"), "listeners.admin")
    admin_grpc = _admin_grpc(listeners.get("admin_grpc", True), admin, (outbound, inbound))
    app = Address.parse(top["app"], "app") if top.get("app") is not None else None
    if inbound is not None and app is None:
        raise ConfigError("app", "required when listeners.inbound is set (where inbound calls go)")
    tls = None
    if top.get("tls") is not None:
        tls_map = _mapping(top["tls"], "tls")
        _known(tls_map, {"cert", "key", "ca"}, "tls")
        paths = {}
        for key in ("cert", "key", "ca"):
            value = tls_map.get(key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"tls.{key}", "required: a PEM file path")
            file = (base_dir / value) if not Path(value).is_absolute() else Path(value)
            if not file.is_file():
                raise ConfigError(f"tls.{key}", f"file not found: {value}")
            paths[key] = file
        tls = TlsFiles(paths["cert"], paths["key"], paths["ca"])
    join_token = _join_token(top["join_token"], base_dir) if top.get("join_token") is not None else None
    if join_token is not None:
        if top.get("control_plane") is None:
            raise ConfigError("join_token", "only used with control_plane (its CA issues the certificate)")
        if tls is not None:
            raise ConfigError(
                "tls", "not allowed with join_token: the certificate comes from the control plane"
            )
    if inbound is not None and tls is None and join_token is None:
        raise ConfigError(
            "tls", "required when listeners.inbound is set (inbound is mutual TLS), or join_token"
        )
    control_plane: Address | None = None
    grpc_services: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    if top.get("control_plane") is not None:
        control_plane = Address.parse(top["control_plane"], "control_plane")
        if control_plane.port == 0:
            raise ConfigError("control_plane", "needs a real port, not 0")
        if "services" in top:
            raise ConfigError(
                "services",
                "not allowed with control_plane: services and endpoints come from the control plane",
            )
        if tls is None and join_token is None:
            raise ConfigError(
                "tls",
                "required with control_plane (the sidecar's identity and mutual TLS), "
                "unless join_token gets the certificate from the control plane's CA",
            )
        grpc_services = _grpc_services(top.get("grpc_services", []), "grpc_services")
        deps = top.get("dependencies", [])
        if not isinstance(deps, list):
            raise ConfigError("dependencies", "expected a list of service names")
        dependencies = tuple(_name(d, f"dependencies[{i}]") for i, d in enumerate(deps))
    else:
        for key in ("grpc_services", "dependencies"):
            if key in top:
                raise ConfigError(key, "only used with control_plane (static services list their own)")
    services_map = _mapping(top.get("services"), "services")
    services = {
        name: _service(_name(name, f"services.{name}"), spec, f"services.{name}")
        for name, spec in services_map.items()
    }
    if services and tls is None and any(s.endpoints for s in services.values()):
        raise ConfigError("tls", "required to call other sidecars (mutual TLS)")
    return SidecarConfig(
        service=service,
        namespace=namespace,
        labels=_labels(top.get("labels"), "labels"),
        outbound=outbound,
        inbound=inbound,
        admin=admin,
        app=app,
        tls=tls,
        services=services,
        max_message_bytes=_positive_int(top.get("max_message_bytes", 64 << 20), "max_message_bytes", 1024),
        max_concurrent_streams=_positive_int(
            top.get("max_concurrent_streams", 4096), "max_concurrent_streams"
        ),
        drain_seconds=_non_negative_number(top.get("drain_seconds", 10.0), "drain_seconds"),
        trust_domain=_name(top.get("trust_domain", "cluster.local"), "trust_domain"),
        control_plane=control_plane,
        grpc_services=grpc_services,
        dependencies=dependencies,
        access_log=_access_log(top.get("access_log"), base_dir),
        rate_limits=_rate_limits(top.get("rate_limits"), namespace, control_plane is None),
        retries=_retry_limits(top),
        admin_grpc=admin_grpc,
        join_token=join_token,
    )


def _retry_limits(top: dict[str, Any]) -> RetryLimits:
    """Limits on the retries routes ask for: Envoy's retry budget (on by default, 20% with a
    floor of 3) and gRFC A6's retry throttling (off unless given)."""
    defaults = RetryLimits()
    budget = _mapping(top.get("retry_budget", {}), "retry_budget")
    _known(budget, {"percent", "min_retry_concurrency"}, "retry_budget")
    percent = _non_negative_number(budget.get("percent", defaults.budget_percent), "retry_budget.percent")
    if percent > 100:
        raise ConfigError("retry_budget.percent", f"expected a percentage 0..100, got {percent!r}")
    floor = _positive_int(
        budget.get("min_retry_concurrency", defaults.min_retry_concurrency),
        "retry_budget.min_retry_concurrency",
        0,
    )
    max_tokens: float | None = None
    ratio = defaults.throttle_token_ratio
    if "retry_throttling" in top:
        throttling = _mapping(top["retry_throttling"], "retry_throttling")
        _known(throttling, {"max_tokens", "token_ratio"}, "retry_throttling")
        if "max_tokens" not in throttling:
            raise ConfigError("retry_throttling.max_tokens", "required (gRFC A6: 1..1000)")
        max_tokens = _non_negative_number(throttling["max_tokens"], "retry_throttling.max_tokens")
        if not 0 < max_tokens <= 1000:
            raise ConfigError(
                "retry_throttling.max_tokens", f"expected 1..1000 (gRFC A6), got {max_tokens!r}"
            )
        ratio = _non_negative_number(throttling.get("token_ratio", ratio), "retry_throttling.token_ratio")
        if not 0 < ratio <= 1:
            raise ConfigError("retry_throttling.token_ratio", f"expected a number in (0, 1], got {ratio!r}")
    buffer = _positive_int(top.get("retry_buffer_bytes", defaults.buffer_bytes), "retry_buffer_bytes", 0)
    return RetryLimits(
        budget_percent=percent,
        min_retry_concurrency=floor,
        throttle_max_tokens=max_tokens,
        throttle_token_ratio=ratio,
        buffer_bytes=buffer,
    )


def load_config(path: Path) -> SidecarConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {exc}") from None
    return parse_config(raw, path.parent)
