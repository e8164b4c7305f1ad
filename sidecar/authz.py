"""Authorization tables: the pushed AuthorizationPolicies, compiled once per snapshot.

`compile_authz(policies)` turns the AuthorizationPolicy specs among a snapshot's policies (the
control plane sends a sidecar those of its namespace and of `mesh-system` whose selector matches
it) into immutable matchers; `Authz.check(head)` decides one inbound call in Istio's order:

1. any DENY policy with a matching rule → denied, naming that policy;
2. no ALLOW policy → allowed;
3. an ALLOW policy with a matching rule → allowed, else denied ("no ALLOW policy matched").

A rule matches when its `from` (any source), `to` (any operation) and every `when` condition
match; an absent part matches every call. A policy without rules matches nothing. Patterns are
exact, `*`, a prefix `x*` or a suffix `*x`. Principals are matched against the caller's SPIFFE ID
(verified by mTLS) with and without `spiffe://`, so `cluster.local/ns/default/sa/orders` and
`spiffe://cluster.local/ns/default/sa/orders` both name it; a caller without a SPIFFE ID has no
principal and no namespace (`*` does not match it, `notPrincipals` do).

JWT conditions read the token RequestAuthentication validated (`head.auth`): `requestPrincipals`
and `request.auth.principal` match "<iss>/<sub>", `request.auth.claims[a][b]` a claim (nested
claims by path; a list claim matches when any string in it does), `request.auth.audiences` and
`request.auth.presenter` the `aud` and `azp` claims. A call without a valid token has none of
them: `values` never match it, `notValues` and `notRequestPrincipals` always do.

A spec the sidecar cannot use (a malformed pattern, an unknown action or condition key) raises
`PolicyRejected` naming the field; discovery NACKs and keeps the last good snapshot.
docs/authorization.md explains the semantics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.call import CallHead
from sidecar.config import Policy
from sidecar.filters.routes import metadata
from sidecar.jwt_authn import RequestAuth
from sidecar.traffic import PolicyRejected, _dicts, _get

KIND = "AuthorizationPolicy"


@dataclass(frozen=True, slots=True)
class Patterns:
    """Exact values, prefixes (`x*`), suffixes (`*x`) or `*` (any non-empty value)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    any: bool

    def __call__(self, value: str) -> bool:
        if not value:
            return False
        return (
            self.any
            or value in self.exact
            or (bool(self.prefixes) and value.startswith(self.prefixes))
            or (bool(self.suffixes) and value.endswith(self.suffixes))
        )


@dataclass(frozen=True, slots=True)
class Peer:
    """What rules read of the caller: its SPIFFE ID, that ID without `spiffe://`, its namespace."""

    spiffe_id: str
    bare: str
    namespace: str


NO_PEER = Peer("", "", "")


def peer_of(spiffe_id: str | None) -> Peer:
    if not spiffe_id:
        return NO_PEER
    bare = spiffe_id[len("spiffe://") :] if spiffe_id.startswith("spiffe://") else spiffe_id
    parts = bare.split("/")
    namespace = parts[2] if len(parts) >= 5 and parts[1] == "ns" and parts[3] == "sa" else ""
    return Peer(spiffe_id, bare, namespace)


Check = Callable[[Peer, CallHead, Mapping[bytes, str]], bool]


def _principal(patterns: Patterns) -> Callable[[Peer], bool]:
    return lambda peer: patterns(peer.spiffe_id) or patterns(peer.bare)


def _namespace(patterns: Patterns) -> Callable[[Peer], bool]:
    return lambda peer: patterns(peer.namespace)


@dataclass(frozen=True, slots=True)
class Rule:
    sources: tuple[Check, ...]  # any; none: every caller
    operations: tuple[Check, ...]  # any; none: every method
    conditions: tuple[Check, ...]  # all

    def matches(self, peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> bool:
        # Plain loops: a generator per part cost more than the checks themselves.
        if self.sources:
            for source in self.sources:
                if source(peer, head, headers):
                    break
            else:
                return False
        if self.operations:
            for operation in self.operations:
                if operation(peer, head, headers):
                    break
            else:
                return False
        for condition in self.conditions:  # noqa: SIM110 (a loop: no generator per call)
            if not condition(peer, head, headers):
                return False
        return True


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    namespace: str
    name: str
    action: str  # ALLOW | DENY
    rules: tuple[Rule, ...]  # none: matches nothing

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def matches(self, peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> bool:
        for rule in self.rules:  # noqa: SIM110 (a loop: no generator per call)
            if rule.matches(peer, head, headers):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Authz:
    deny: tuple[CompiledPolicy, ...]
    allow: tuple[CompiledPolicy, ...]
    needs_headers: bool = False  # some `when` reads request.headers[...]
    no_allow_message: str = ""
    header_names: frozenset[bytes] = frozenset()  # the headers some `when` reads
    reads_auth: bool = False  # some rule reads the validated JWT (head.auth)

    @property
    def empty(self) -> bool:
        return not self.deny and not self.allow

    def key(self, head: CallHead) -> Hashable:
        """Everything `check` reads of a call: two calls with equal keys get the same decision."""
        if not self.needs_headers and not self.reads_auth:
            return (head.peer, head.path)
        wanted = self.header_names
        values = tuple((n, v) for n, v, _ in head.headers if n in wanted) if wanted else ()
        return (head.peer, head.path, values, head.auth if self.reads_auth else None)

    def check(self, head: CallHead, peer: Peer | None = None) -> str | None:
        """None when the call is allowed, else the denial message (naming the policy)."""
        peer = peer if peer is not None else peer_of(head.peer)
        headers = metadata(head) if self.needs_headers else {}
        for policy in self.deny:
            if policy.matches(peer, head, headers):
                return f"RBAC: denied by AuthorizationPolicy {policy.ref}"
        if not self.allow:
            return None
        for policy in self.allow:
            if policy.matches(peer, head, headers):
                return None
        return self.no_allow_message


NO_AUTHZ = Authz((), ())


# ---------------------------------------------------------------------------- compile


def _patterns(obj: Mapping[str, Any], key: str, path: str) -> Patterns | None:
    items = _get(obj, key, list, path)
    if items is None:
        return None
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    any_value = False
    for i, item in enumerate(items):
        where = f"{path}.{key}[{i}]"
        if not isinstance(item, str):
            raise PolicyRejected(where, f"expected a string, got {type(item).__name__}")
        stars = item.count("*")
        if item == "*":
            any_value = True
        elif stars == 0 and item:
            exact.add(item)
        elif stars == 1 and item.endswith("*"):
            prefixes.append(item[:-1])
        elif stars == 1 and item.startswith("*"):
            suffixes.append(item[1:])
        else:
            raise PolicyRejected(
                where,
                f"{item!r}: '*' may only be the whole value, a prefix (*-suffix) or a suffix (prefix-*)"
                if item
                else "empty pattern",
            )
    return Patterns(frozenset(exact), tuple(prefixes), tuple(suffixes), any_value)


def _always(peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> bool:
    return True


def _never(peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> bool:
    return False


def _on_peer(test: Callable[[Peer], bool], negate: bool) -> Check:
    if negate:
        return lambda peer, head, headers: not test(peer)
    return lambda peer, head, headers: test(peer)


def _all(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    parts = tuple(checks)
    return lambda peer, head, headers: all(c(peer, head, headers) for c in parts)


@dataclass(slots=True)
class _Reads:
    """What the rules compiled so far read of a call beyond its peer and path."""

    headers: set[bytes]
    auth: bool = False


def _source(spec: Mapping[str, Any], path: str, reads: _Reads) -> Check:
    checks: list[Check] = []
    for key, of, negate in (
        ("principals", _principal, False),
        ("notPrincipals", _principal, True),
        ("namespaces", _namespace, False),
        ("notNamespaces", _namespace, True),
    ):
        patterns = _patterns(spec, key, path)
        if patterns is not None:
            checks.append(_on_peer(of(patterns), negate))
    request_principals = _patterns(spec, "requestPrincipals", path)
    if request_principals is not None:
        checks.append(_on_auth(_request_principal(request_principals), negate=False))
        reads.auth = True
    not_request_principals = _patterns(spec, "notRequestPrincipals", path)
    if not_request_principals is not None:
        checks.append(_on_auth(_request_principal(not_request_principals), negate=True))
        reads.auth = True
    return _all(checks) if checks else _always


def _request_principal(patterns: Patterns) -> Callable[[RequestAuth | None], bool]:
    return lambda auth: auth is not None and patterns(auth.principal)


def _on_auth(test: Callable[[RequestAuth | None], bool], negate: bool) -> Check:
    if negate:
        return lambda peer, head, headers: not test(head.auth)
    return lambda peer, head, headers: test(head.auth)


def _claim_values(names: tuple[str, ...]) -> Callable[[RequestAuth | None], tuple[str, ...]]:
    """The string values of a (nested) claim: a string, or the strings in a list."""

    def values_of(auth: RequestAuth | None) -> tuple[str, ...]:
        if auth is None:
            return ()
        value: Any = auth.claims
        for name in names:
            if not isinstance(value, Mapping):
                return ()
            value = value.get(name)
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()

    return values_of


_AUTH_KEYS: dict[str, Callable[[RequestAuth | None], tuple[str, ...]]] = {
    "request.auth.principal": lambda auth: (auth.principal,) if auth is not None else (),
    "request.auth.audiences": lambda auth: auth.audiences if auth is not None else (),
    "request.auth.presenter": lambda auth: (auth.presenter,) if auth is not None else (),
}


def _auth_check(
    values_of: Callable[[RequestAuth | None], tuple[str, ...]],
    values: Patterns | None,
    not_values: Patterns | None,
) -> Check:
    """`values`: some value matches; `notValues`: none does (absent: values fail, notValues hold)."""

    def check(peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> bool:
        found = values_of(head.auth)
        if values is not None and not any(values(v) for v in found):
            return False
        return not_values is None or not any(not_values(v) for v in found)

    return check


def _operation(spec: Mapping[str, Any], path: str) -> Check:
    checks: list[Check] = []
    paths = _patterns(spec, "paths", path)
    if paths is not None:
        checks.append(lambda peer, head, headers: paths(head.path))
    not_paths = _patterns(spec, "notPaths", path)
    if not_paths is not None:
        checks.append(lambda peer, head, headers: not not_paths(head.path))
    methods = _patterns(spec, "methods", path)
    if methods is not None and not methods("POST"):  # every gRPC call is a POST
        checks.append(_never)
    return _all(checks) if checks else _always


_HEADER_KEY = re.compile(r"request\.headers\[([^\[\]]*)\]")
_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
_CLAIM_NAME = re.compile(r"\[([^\[\]]+)\]")


def _condition(spec: Mapping[str, Any], path: str, reads: _Reads) -> Check:
    key = _get(spec, "key", str, path)
    if key is None:
        raise PolicyRejected(f"{path}.key", "required")
    values = _patterns(spec, "values", path)
    not_values = _patterns(spec, "notValues", path)
    if values is None and not_values is None:
        raise PolicyRejected(path, "needs values or notValues")
    claim = _CLAIM_KEY.fullmatch(key)
    if claim is not None:
        names = tuple(_CLAIM_NAME.findall(claim.group(1)))
        reads.auth = True
        return _auth_check(_claim_values(names), values, not_values)
    if key in _AUTH_KEYS:
        reads.auth = True
        return _auth_check(_AUTH_KEYS[key], values, not_values)
    header = _HEADER_KEY.fullmatch(key)
    if header is not None:
        name = header.group(1).lower()
        if not name or name.endswith("-bin") or name.startswith(":"):
            raise PolicyRejected(f"{path}.key", f"{key!r}: header {name!r} cannot be matched")
        raw = name.encode("utf-8")

        def value_of(peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> str:
            return headers.get(raw, "")

        reads.headers.add(raw)
        return _value_check(value_of, values, not_values)
    if key == "source.principal":
        return _value_check(lambda peer, h, m: peer.spiffe_id, values, not_values, bare=True)
    if key == "source.namespace":
        return _value_check(lambda peer, h, m: peer.namespace, values, not_values)
    raise PolicyRejected(
        f"{path}.key",
        f"{key!r} is not supported; use request.headers[<name>], request.auth.claims[<claim>], "
        "request.auth.principal, request.auth.audiences, request.auth.presenter, "
        "source.principal or source.namespace",
    )


def _value_check(
    value_of: Callable[[Peer, CallHead, Mapping[bytes, str]], str],
    values: Patterns | None,
    not_values: Patterns | None,
    bare: bool = False,
) -> Check:
    def matches(patterns: Patterns, peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> bool:
        if bare:
            return patterns(peer.spiffe_id) or patterns(peer.bare)
        return patterns(value_of(peer, head, headers))

    def check(peer: Peer, head: CallHead, headers: Mapping[bytes, str]) -> bool:
        if values is not None and not matches(values, peer, head, headers):
            return False
        return not_values is None or not matches(not_values, peer, head, headers)

    return check


def _rule(spec: Mapping[str, Any], path: str, reads: _Reads) -> Rule:
    sources = []
    for p, entry in _dicts(spec, "from", path):
        source = _get(entry, "source", dict, p)
        if source is None:
            raise PolicyRejected(f"{p}.source", "required")
        sources.append(_source(source, f"{p}.source", reads))
    operations = []
    for p, entry in _dicts(spec, "to", path):
        operation = _get(entry, "operation", dict, p)
        if operation is None:
            raise PolicyRejected(f"{p}.operation", "required")
        operations.append(_operation(operation, f"{p}.operation"))
    conditions = [_condition(entry, p, reads) for p, entry in _dicts(spec, "when", path)]
    return Rule(tuple(sources), tuple(operations), tuple(conditions))


ACTIONS = ("ALLOW", "DENY")


def _no_allow_message(allow: list[CompiledPolicy]) -> str:
    refs = [p.ref for p in allow]
    shown = ", ".join(refs[:3]) + (f" and {len(refs) - 3} more" if len(refs) > 3 else "")
    noun = "AuthorizationPolicy" if len(refs) == 1 else "AuthorizationPolicies"
    return f"RBAC: denied: no ALLOW policy matched ({noun} {shown})"


def compile_authz(policies: Iterable[Policy]) -> Authz:
    """Compile the AuthorizationPolicies among `policies`, in (namespace, name) order;
    PolicyRejected naming the field when one cannot be used."""
    indexed = [(i, p) for i, p in enumerate(policies) if p.kind == KIND]
    if not indexed:
        return NO_AUTHZ
    deny: list[CompiledPolicy] = []
    allow: list[CompiledPolicy] = []
    reads = _Reads(set())
    for index, policy in sorted(indexed, key=lambda t: (t[1].namespace, t[1].name)):
        path = f"policies[{index}].spec"
        action = _get(policy.spec, "action", str, path, "ALLOW")
        if action not in ACTIONS:
            raise PolicyRejected(f"{path}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
        rules = [_rule(spec, rule_path, reads) for rule_path, spec in _dicts(policy.spec, "rules", path)]
        compiled = CompiledPolicy(policy.namespace, policy.name, action, tuple(rules))
        (deny if action == "DENY" else allow).append(compiled)
    message = _no_allow_message(allow) if allow else ""
    headers = frozenset(reads.headers)
    return Authz(tuple(deny), tuple(allow), bool(headers), message, headers, reads.auth)
