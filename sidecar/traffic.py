"""Traffic tables: the pushed VirtualServices and DestinationRules, compiled once per snapshot.

`compile_traffic(policies, services)` turns the policy specs into typed, immutable tables:

- `clusters`: (service, subset or None) → the endpoints it selects, its load-balancing policy
  (the DestinationRule's `trafficPolicy.loadBalancer`, a subset's own overriding it) and its
  resilience settings (`connectionPool`, `outlierDetection`, `circuitBreaker`, `healthCheck`:
  sidecar.clusters).
  The `(service, None)` cluster is every endpoint of the service.
- `routes`: service → its VirtualService's http[] routes in order, each with compiled matchers
  (regexes compiled here, header names as bytes) and cumulative weights over its destinations.

A spec the sidecar cannot use raises `PolicyRejected` naming the field (`policies[i].spec...`);
discovery turns it into a NACK and the sidecar keeps its last good snapshot. A route to a subset
its DestinationRule does not define is such an error; a subset whose labels select no endpoint
is not (endpoints come and go): calls routed to it fail with UNAVAILABLE until one registers.

docs/traffic.md explains the semantics chosen.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.policy.fields import parse_duration
from sidecar.circuit import BreakerConfig, ConnectionLimits
from sidecar.clusters import NO_RESILIENCE, Resilience
from sidecar.config import Endpoint, Policy, ServiceEntry
from sidecar.grpc_wire import Code
from sidecar.health_check import HealthCheckConfig
from sidecar.outlier import FailurePercentageEjection, OutlierConfig, SuccessRateEjection
from sidecar.retry import DEFAULT_RETRY_ON, RetryPolicy

DEFAULT_RING_SIZE = 1024


class PolicyRejected(ValueError):
    """A pushed policy the sidecar will not apply: `path` names the field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    kind: str = "ROUND_ROBIN"  # ROUND_ROBIN | RANDOM | LEAST_REQUEST | RING_HASH
    hash_header: bytes = b""  # RING_HASH: the metadata key hashed
    ring_size: int = DEFAULT_RING_SIZE


@dataclass(frozen=True, slots=True)
class Cluster:
    service: str
    subset: str | None
    endpoints: tuple[Endpoint, ...]
    lb: LoadBalancer
    resilience: Resilience = NO_RESILIENCE  # connectionPool, outlierDetection, circuitBreaker, healthCheck


StrMatcher = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    name: bytes
    matches: StrMatcher  # on the value (several values of one key joined with ',')


@dataclass(frozen=True, slots=True)
class MatchBlock:
    """Every condition must hold (AND)."""

    uri: StrMatcher | None
    headers: tuple[HeaderCondition, ...]


@dataclass(frozen=True, slots=True)
class Fault:
    """A route's `fault`: delay and/or abort a share of its calls (fractions in 0..1)."""

    delay: float = 0.0  # seconds
    delay_fraction: float = 0.0
    abort_code: int = 0
    abort_fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class Mirror:
    """A route's `mirror` + `mirrorPercentage`: where copies of a share of its calls go."""

    service: str
    subset: str | None
    fraction: float  # 0..1; Istio's default when mirrorPercentage is absent is 100%


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What a route asks of the relay beyond where the call goes."""

    timeout: float | None = None  # bounds the whole call, retries included
    retry: RetryPolicy | None = None
    fault: Fault | None = None
    mirror: Mirror | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One http[] entry: matches if any block does (OR); no blocks matches every call."""

    name: str
    blocks: tuple[MatchBlock, ...]
    destinations: tuple[tuple[str, str | None], ...]  # cluster keys
    cumulative: tuple[int, ...]  # running sums of the weights
    total: int
    policy: RoutePolicy | None = None


@dataclass(frozen=True, slots=True)
class Traffic:
    routes: Mapping[str, tuple[Route, ...]]  # services with a VirtualService
    clusters: Mapping[tuple[str, str | None], Cluster]
    needs_headers: bool = False  # some route matches on headers


NO_TRAFFIC = Traffic({}, {})  # no VirtualService or DestinationRule: plain round robin


def service_of(host: str, services: Iterable[str]) -> str:
    """The service a policy host names: itself if known, else its first label (users.default.svc → users)."""
    if host in services:
        return host
    return host.split(".", 1)[0]


# The sidecar reads the fields it routes with and checks their shape here, naming the field; it does
# not re-run the policy API's full validation: a spec stored under older rules (unknown extra fields,
# a destination host that is no service) must not make every caller Nack. Such a destination simply
# has no endpoints.


def _get(
    obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str, default: Any = None
) -> Any:
    if key not in obj:
        return default
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PolicyRejected(f"{path}.{key}", f"expected {_a(names)}, got {type(value).__name__}")
    return value


def _a(name: str) -> str:
    return {"dict": "an object", "list": "a list", "str": "a string", "int": "an integer"}.get(name, name)


def _dicts(obj: Mapping[str, Any], key: str, path: str) -> list[tuple[str, dict[str, Any]]]:
    items = _get(obj, key, list, path, [])
    out = []
    for i, value in enumerate(items):
        if not isinstance(value, dict):
            raise PolicyRejected(f"{path}.{key}[{i}]", f"expected an object, got {type(value).__name__}")
        out.append((f"{path}.{key}[{i}]", value))
    return out


def _string_matcher(spec: Mapping[str, Any], path: str) -> StrMatcher:
    if "exact" in spec:
        value: str = _get(spec, "exact", str, path)
        return value.__eq__
    if "prefix" in spec:
        prefix: str = _get(spec, "prefix", str, path)
        return lambda s: s.startswith(prefix)
    if "regex" in spec:
        try:
            pattern = re.compile(_get(spec, "regex", str, path))
        except re.error as exc:
            raise PolicyRejected(f"{path}.regex", f"invalid regular expression: {exc}") from None
        return lambda s: pattern.fullmatch(s) is not None
    if spec.get("present") is True:
        return lambda s: True  # the header is there
    raise PolicyRejected(path, "needs one of exact, prefix, regex (or present: true for headers)")


def _never(value: str) -> bool:
    return False


def _block(spec: Mapping[str, Any], path: str = "match") -> MatchBlock:
    uri = _string_matcher(_get(spec, "uri", dict, path), f"{path}.uri") if "uri" in spec else None
    headers = []
    for name, match in _get(spec, "headers", dict, path, {}).items():
        key = str(name).lower()
        if not isinstance(match, dict):
            raise PolicyRejected(f"{path}.headers.{name}", f"expected an object, got {type(match).__name__}")
        matcher = _string_matcher(match, f"{path}.headers.{name}")
        # Binary metadata and pseudo-headers never match (the policy API refuses them too).
        if key.endswith("-bin") or key.startswith(":"):
            matcher = _never
        headers.append(HeaderCondition(key.encode("utf-8"), matcher))
    return MatchBlock(uri, tuple(headers))


LOAD_BALANCERS = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")


def _load_balancer(policy: Mapping[str, Any], path: str, default: LoadBalancer) -> LoadBalancer:
    lb = _get(policy, "loadBalancer", dict, path)
    if lb is None:
        return default
    path = f"{path}.loadBalancer"
    if "simple" in lb:
        simple = _get(lb, "simple", str, path)
        if simple not in LOAD_BALANCERS:
            raise PolicyRejected(f"{path}.simple", f"{simple!r} is not one of {', '.join(LOAD_BALANCERS)}")
        return LoadBalancer(simple)
    if "consistentHash" in lb:
        ch = _get(lb, "consistentHash", dict, path)
        header = _get(ch, "httpHeaderName", str, f"{path}.consistentHash")
        if header is None:
            raise PolicyRejected(
                f"{path}.consistentHash.httpHeaderName", "required (the metadata key hashed)"
            )
        ring = _get(ch, "ringHash", dict, f"{path}.consistentHash", {})
        size = _get(ring, "minimumRingSize", int, f"{path}.consistentHash.ringHash", DEFAULT_RING_SIZE)
        return LoadBalancer("RING_HASH", header.lower().encode("utf-8"), max(1, size))
    return default


def _seconds(obj: Mapping[str, Any], key: str, path: str) -> float | None:
    text = _get(obj, key, str, path)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise PolicyRejected(f"{path}.{key}", str(exc)) from None


def _count(obj: Mapping[str, Any], key: str, path: str, default: int, maximum: int | None = None) -> int:
    value: int = _get(obj, key, int, path, default)
    if value < 0 or (maximum is not None and value > maximum):
        bound = "" if maximum is None else f" and at most {maximum}"
        raise PolicyRejected(f"{path}.{key}", f"must be at least 0{bound}, got {value}")
    return value


def _connection_limits(spec: Mapping[str, Any], path: str) -> ConnectionLimits:
    http = _get(spec, "http", dict, path, {})
    path = f"{path}.http"
    return ConnectionLimits(
        max_requests=_count(http, "http2MaxRequests", path, 0),
        max_pending=_count(http, "http1MaxPendingRequests", path, 0),
        max_retries=_count(http, "maxRetries", path, 0),
    )


def _outlier(spec: Mapping[str, Any], path: str) -> OutlierConfig:
    default = OutlierConfig()
    consecutive = _count(spec, "consecutiveErrors", path, default.consecutive_errors)
    base = _seconds(spec, "baseEjectionTime", path)
    config = OutlierConfig(
        consecutive_errors=_count(spec, "consecutive5xxErrors", path, consecutive),
        consecutive_gateway_errors=_count(spec, "consecutiveGatewayErrors", path, 0),
        interval=_seconds(spec, "interval", path) or default.interval,
        base_ejection_time=default.base_ejection_time if base is None else base,
        max_ejection_time=_seconds(spec, "maxEjectionTime", path) or default.max_ejection_time,
        max_ejection_percent=_count(spec, "maxEjectionPercent", path, default.max_ejection_percent, 100),
    )
    rule = _get(spec, "successRateEjection", dict, path)
    if rule is not None:
        sub = f"{path}.successRateEjection"
        d = SuccessRateEjection()
        factor = _get(rule, "stdevFactor", (int, float), sub, d.stdev_factor)
        if isinstance(factor, bool) or factor <= 0:
            raise PolicyRejected(f"{sub}.stdevFactor", f"must be a number above 0, got {factor!r}")
        config = dataclasses.replace(
            config,
            success_rate=SuccessRateEjection(
                float(factor),
                _count(rule, "enforcementPercentage", sub, d.enforcement_percentage, 100),
                _count(rule, "minimumHosts", sub, d.minimum_hosts),
                _count(rule, "requestVolume", sub, d.request_volume),
            ),
        )
    rule = _get(spec, "failurePercentageEjection", dict, path)
    if rule is not None:
        sub = f"{path}.failurePercentageEjection"
        f = FailurePercentageEjection()
        config = dataclasses.replace(
            config,
            failure_percentage=FailurePercentageEjection(
                _count(rule, "threshold", sub, f.threshold, 100),
                _count(rule, "enforcementPercentage", sub, f.enforcement_percentage, 100),
                _count(rule, "minimumHosts", sub, f.minimum_hosts),
                _count(rule, "requestVolume", sub, f.request_volume),
            ),
        )
    return config


def _breaker(spec: Mapping[str, Any], path: str) -> BreakerConfig:
    d = BreakerConfig()
    open_time = _seconds(spec, "openTime", path)
    config = BreakerConfig(
        consecutive_failures=_count(spec, "consecutiveFailures", path, d.consecutive_failures),
        open_time=d.open_time if open_time is None else open_time,
        half_open_calls=_count(spec, "halfOpenCalls", path, d.half_open_calls),
    )
    checks = (("consecutiveFailures", config.consecutive_failures), ("halfOpenCalls", config.half_open_calls))
    for key, value in checks:
        if value < 1:
            raise PolicyRejected(f"{path}.{key}", f"must be at least 1, got {value}")
    return config


def _health_check(spec: Mapping[str, Any], path: str) -> HealthCheckConfig:
    d = HealthCheckConfig()
    interval = _seconds(spec, "interval", path)
    timeout = _seconds(spec, "timeout", path)
    config = HealthCheckConfig(
        interval=d.interval if interval is None else interval,
        timeout=d.timeout if timeout is None else timeout,
        unhealthy_threshold=_count(spec, "unhealthyThreshold", path, d.unhealthy_threshold),
        healthy_threshold=_count(spec, "healthyThreshold", path, d.healthy_threshold),
        service=_get(spec, "serviceName", str, path, d.service),
    )
    for key, value in (
        ("unhealthyThreshold", config.unhealthy_threshold),
        ("healthyThreshold", config.healthy_threshold),
    ):
        if value < 1:
            raise PolicyRejected(f"{path}.{key}", f"must be at least 1, got {value}")
    if config.interval <= 0 or config.timeout <= 0:
        raise PolicyRejected(path, "interval and timeout must be above 0")
    return config


def _resilience(policy: Mapping[str, Any], path: str, default: Resilience) -> Resilience:
    """The trafficPolicy's connectionPool, outlierDetection, circuitBreaker and healthCheck; a
    block absent here is the `default`'s (a subset's trafficPolicy over its rule's)."""
    pool = _get(policy, "connectionPool", dict, path)
    outlier = _get(policy, "outlierDetection", dict, path)
    breaker = _get(policy, "circuitBreaker", dict, path)
    check = _get(policy, "healthCheck", dict, path)
    return Resilience(
        default.limits if pool is None else _connection_limits(pool, f"{path}.connectionPool"),
        default.outlier if outlier is None else _outlier(outlier, f"{path}.outlierDetection"),
        default.breaker if breaker is None else _breaker(breaker, f"{path}.circuitBreaker"),
        default.health_check if check is None else _health_check(check, f"{path}.healthCheck"),
    )


def _first_by_name(
    policies: Iterable[tuple[int, Policy]], hosts: Callable[[int, dict[str, Any]], Iterable[str]]
) -> dict[str, tuple[int, dict[str, Any]]]:
    """host → (policy index, spec) of the first policy by (namespace, name) naming it."""
    chosen: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, policy in sorted(policies, key=lambda t: (t[1].namespace, t[1].name)):
        for host in hosts(index, policy.spec):
            chosen.setdefault(host, (index, policy.spec))
    return chosen


def compile_traffic(policies: Iterable[Policy], services: Mapping[str, ServiceEntry]) -> Traffic:
    """Compile the VirtualServices and DestinationRules among `policies`; PolicyRejected naming the
    field when one cannot be used."""
    rules = [(i, p) for i, p in enumerate(policies) if p.kind == "DestinationRule"]
    virtuals = [(i, p) for i, p in enumerate(policies) if p.kind == "VirtualService"]
    if not rules and not virtuals:
        return NO_TRAFFIC
    names = services.keys()

    def rule_host(index: int, spec: dict[str, Any]) -> list[str]:
        host = _get(spec, "host", str, f"policies[{index}].spec")
        return [] if host is None else [service_of(host, names)]

    def vs_hosts(index: int, spec: dict[str, Any]) -> list[str]:
        path = f"policies[{index}].spec"
        hosts = _get(spec, "hosts", list, path, [])
        for j, host in enumerate(hosts):
            if not isinstance(host, str):
                raise PolicyRejected(f"{path}.hosts[{j}]", f"expected a string, got {type(host).__name__}")
        return [service_of(h, names) for h in hosts]

    by_host = _first_by_name(rules, rule_host)
    clusters: dict[tuple[str, str | None], Cluster] = {}
    defaults: dict[str, LoadBalancer] = {}
    guards: dict[str, Resilience] = {}
    defined: dict[str, set[str]] = {}
    for host, (index, rule) in by_host.items():
        path = f"policies[{index}].spec"
        rule_policy = _get(rule, "trafficPolicy", dict, path, {})
        defaults[host] = default = _load_balancer(rule_policy, f"{path}.trafficPolicy", LoadBalancer())
        guards[host] = guard = _resilience(rule_policy, f"{path}.trafficPolicy", NO_RESILIENCE)
        known = services.get(host)
        endpoints = known.endpoints if known is not None else ()
        for sub_path, subset in _dicts(rule, "subsets", path):
            name = _get(subset, "name", str, sub_path)
            if name is None:
                raise PolicyRejected(f"{sub_path}.name", "required")
            labels = _get(subset, "labels", dict, sub_path, {}).items()
            selected = tuple(ep for ep in endpoints if labels <= ep.labels.items())
            policy = _get(subset, "trafficPolicy", dict, sub_path, {})
            lb = _load_balancer(policy, f"{sub_path}.trafficPolicy", default)
            resilience = _resilience(policy, f"{sub_path}.trafficPolicy", guard)
            clusters[(host, name)] = Cluster(host, name, selected, lb, resilience)
            defined.setdefault(host, set()).add(name)
    for name, entry in services.items():
        clusters[(name, None)] = Cluster(
            name, None, entry.endpoints, defaults.get(name, LoadBalancer()), guards.get(name, NO_RESILIENCE)
        )

    by_service = _first_by_name(virtuals, vs_hosts)
    routes: dict[str, tuple[Route, ...]] = {}
    needs_headers = False
    for service, (index, spec) in by_service.items():
        compiled = []
        for path, http in _dicts(spec, "http", f"policies[{index}].spec"):
            destinations: list[tuple[str, str | None]] = []
            cumulative: list[int] = []
            total = 0
            targets = _dicts(http, "route", path)
            if not targets:
                raise PolicyRejected(f"{path}.route", "needs at least one destination")
            weighted = any("weight" in route for _, route in targets)  # else an even split
            for route_path, route in targets:
                dest = _get(route, "destination", dict, route_path)
                dest_host = None if dest is None else _get(dest, "host", str, f"{route_path}.destination")
                if dest is None or dest_host is None:
                    raise PolicyRejected(f"{route_path}.destination.host", "required")
                host = service_of(dest_host, names)
                subset = _get(dest, "subset", str, f"{route_path}.destination")
                if subset is not None and subset not in defined.get(host, ()):
                    raise PolicyRejected(
                        f"{route_path}.destination.subset",
                        f"no DestinationRule for {dest_host!r} defines subset {subset!r}",
                    )
                if (host, subset) not in clusters:  # a service this sidecar does not know (yet)
                    clusters[(host, subset)] = Cluster(host, subset, (), LoadBalancer())
                weight = _get(route, "weight", int, route_path, 0 if weighted else 1)
                if weight < 0:
                    raise PolicyRejected(f"{route_path}.weight", f"negative: {weight}")
                total += weight
                destinations.append((host, subset))
                cumulative.append(total)
            if total <= 0:
                raise PolicyRejected(f"{path}.route", "weights sum to 0: the route could send nowhere")
            blocks = tuple(_block(m, p) for p, m in _dicts(http, "match", path))
            needs_headers = needs_headers or any(b.headers for b in blocks)
            name = http.get("name", "")
            policy = _route_policy(http, path, names, defined)
            if policy is not None and policy.mirror is not None:
                key = (policy.mirror.service, policy.mirror.subset)
                clusters.setdefault(key, Cluster(key[0], key[1], (), LoadBalancer()))
            compiled.append(Route(str(name), blocks, tuple(destinations), tuple(cumulative), total, policy))
        routes[service] = tuple(compiled)
    return Traffic(routes, clusters, needs_headers)


def _fraction(obj: Mapping[str, Any], key: str, path: str, default: float) -> float:
    percentage = _get(obj, key, dict, path)
    if percentage is None:
        return default
    value = _get(percentage, "value", (int, float), f"{path}.{key}", 0)
    if isinstance(value, bool) or not 0 <= value <= 100:
        raise PolicyRejected(f"{path}.{key}.value", f"must be a percentage 0..100, got {value!r}")
    return float(value) / 100.0


def _status_code(value: object, path: str) -> int:
    if isinstance(value, str) and value in Code.__members__:
        return int(Code[value])
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value <= 16:
        return int(value)
    raise PolicyRejected(path, f"must be a gRPC status name or a code 1..16, got {value!r}")


def retry_codes(text: str, path: str) -> frozenset[int]:
    """retryOn: Istio's names (unavailable, deadline-exceeded) or gRPC code names, comma separated."""
    codes = set()
    for part in text.split(","):
        name = part.strip().upper().replace("-", "_")
        if name not in Code.__members__ or name == "OK":
            raise PolicyRejected(path, f"{part.strip()!r} is not a gRPC status to retry on")
        codes.add(int(Code[name]))
    return frozenset(codes)


def _route_policy(
    http: Mapping[str, Any], path: str, names: Iterable[str], defined: Mapping[str, set[str]]
) -> RoutePolicy | None:
    timeout = _seconds(http, "timeout", path)
    retry = None
    retries = _get(http, "retries", dict, path)
    if retries is not None:
        rpath = f"{path}.retries"
        attempts = _get(retries, "attempts", int, rpath, 0)
        if attempts < 0:
            raise PolicyRejected(f"{rpath}.attempts", f"negative: {attempts}")
        text = _get(retries, "retryOn", str, rpath)
        retry_on = DEFAULT_RETRY_ON if text is None else retry_codes(text, f"{rpath}.retryOn")
        if attempts > 0:
            retry = RetryPolicy.from_retries(attempts, retry_on, _seconds(retries, "perTryTimeout", rpath))
    fault = None
    spec = _get(http, "fault", dict, path)
    if spec is not None:
        fpath = f"{path}.fault"
        delay = _get(spec, "delay", dict, fpath)
        abort = _get(spec, "abort", dict, fpath)
        fault = Fault(
            delay=0.0 if delay is None else _seconds(delay, "fixedDelay", f"{fpath}.delay") or 0.0,
            delay_fraction=0.0 if delay is None else _fraction(delay, "percentage", f"{fpath}.delay", 1.0),
            abort_code=0
            if abort is None
            else _status_code(abort.get("grpcStatus"), f"{fpath}.abort.grpcStatus"),
            abort_fraction=0.0 if abort is None else _fraction(abort, "percentage", f"{fpath}.abort", 1.0),
        )
    mirror = None
    spec = _get(http, "mirror", dict, path)
    if spec is not None:
        host = _get(spec, "host", str, f"{path}.mirror")
        if host is None:
            raise PolicyRejected(f"{path}.mirror.host", "required")
        service = service_of(host, names)
        subset = _get(spec, "subset", str, f"{path}.mirror")
        if subset is not None and subset not in defined.get(service, ()):
            raise PolicyRejected(
                f"{path}.mirror.subset", f"no DestinationRule for {host!r} defines subset {subset!r}"
            )
        mirror = Mirror(service, subset, _fraction(http, "mirrorPercentage", path, 1.0))
    if timeout is None and retry is None and fault is None and mirror is None:
        return None
    return RoutePolicy(timeout, retry, fault, mirror)
