"""The CPU an inbound call spends in authorization (and JWT validation), next to the relay's cost.

In process, no sockets: each scenario runs the inbound filters the sidecar builds for a snapshot
(`sidecar.chain.build_inbound`'s Authorization and RequestAuthentication) over prepared call
heads, ending at a terminal that returns a fixed Target, and takes the CPU time (process_time) per
call; the same loop through the terminal alone is subtracted. Medians of `--reps` runs of
`--calls` calls. The issue's goal: 50 rules add under 10% of the relay's ~70 µs per call per hop
(bench/README.md), i.e. under 7 µs.

    .venv/bin/python -m bench.authz                 # writes bench/results/authz.md
    .venv/bin/python -m bench.authz --calls 20000 --reps 7
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sidecar.authz import compile_authz
from sidecar.call import CallHead, Handler, Target
from sidecar.config import Address, Policy
from sidecar.errors import MeshError
from sidecar.filters.authorization import Authorization, AuthorizationConfig
from sidecar.filters.request_authentication import RequestAuthentication, RequestAuthenticationConfig
from sidecar.h2.stream import Limits
from sidecar.jwks import JwksStore
from sidecar.jwt_authn import compile_jwt_authn
from sidecar.pool import UpstreamPool
from sidecar.stats import Stats

RELAY_US_PER_HOP = 70.0  # bench/README.md: the sidecar's CPU per call per hop
GOAL_SHARE = 0.10
RULES = 50
CALLER = "spiffe://cluster.local/ns/default/sa/orders"
PATH = "/demo.v1.Users/GetUser"
ISSUER = "https://auth.example.com"
METADATA = (
    (b"content-type", b"application/grpc", False),
    (b"te", b"trailers", False),
    (b"user-agent", b"grpc-python/1.85.1 grpc-c/50.0.0 (linux; chttp2)", False),
    (b"x-tenant", b"acme", False),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
)
TARGET = Target(
    "users", UpstreamPool(Address("127.0.0.1", 1), ssl_context=None, limits=Limits()), b"", b"http"
)


def _policy(name: str, rules: list[dict[str, Any]], action: str = "ALLOW") -> Policy:
    return Policy("AuthorizationPolicy", "default", name, {"action": action, "rules": rules})


def _principal_rule(i: int, matching: bool) -> dict[str, Any]:
    """One rule on a principal and a method; only the `matching` one names the caller."""
    principal = "cluster.local/ns/default/sa/orders" if matching else f"cluster.local/ns/default/sa/svc-{i}"
    return {
        "from": [{"source": {"principals": [principal]}}],
        "to": [{"operation": {"paths": [PATH if matching else f"/demo.v1.Svc{i}/*"]}}],
    }


def _header_rule(i: int, matching: bool) -> dict[str, Any]:
    return {"when": [{"key": "request.headers[x-tenant]", "values": ["acme" if matching else f"tenant-{i}"]}]}


def _claim_rule(i: int, matching: bool) -> dict[str, Any]:
    return {
        "from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}],
        "when": [{"key": "request.auth.claims[groups]", "values": ["admins" if matching else f"group-{i}"]}],
    }


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    policies: list[Policy]
    headers: tuple[tuple[bytes, bytes, bool], ...] = METADATA
    expect_denied: bool = False


def _scenarios(tokens: dict[str, str], jwks: str) -> list[Scenario]:
    last_matches = [i == RULES - 1 for i in range(RULES)]
    jwt_policy = Policy(
        "RequestAuthentication",
        "default",
        "jwt",
        {"jwtRules": [{"issuer": ISSUER, "jwks": jwks, "audiences": ["users"]}]},
    )
    bearer = (b"authorization", f"Bearer {tokens['RS256']}".encode(), False)
    return [
        Scenario(
            "50 policies x 1 rule",
            "50 ALLOW policies on principal + method; the last one matches (all 50 tried)",
            [_policy(f"p{i:02d}", [_principal_rule(i, m)]) for i, m in enumerate(last_matches)],
        ),
        Scenario(
            "1 policy x 50 rules",
            "one ALLOW policy of 50 principal + method rules; the last one matches",
            [_policy("p", [_principal_rule(i, m) for i, m in enumerate(last_matches)])],
        ),
        Scenario(
            "25 DENY + 25 ALLOW",
            "25 DENY policies that do not match, then 25 ALLOW; the last ALLOW matches",
            [_policy(f"d{i:02d}", [_principal_rule(i, False)], "DENY") for i in range(25)]
            + [_policy(f"p{i:02d}", [_principal_rule(i, i == 24)]) for i in range(25)],
        ),
        Scenario(
            "50 header conditions",
            "50 ALLOW policies on request.headers[x-tenant]; the metadata is joined per call",
            [_policy(f"p{i:02d}", [_header_rule(i, m)]) for i, m in enumerate(last_matches)],
        ),
        Scenario(
            "50 rules, denied",
            "50 ALLOW policies, none matches: PERMISSION_DENIED raised",
            [_policy(f"p{i:02d}", [_principal_rule(i, False)]) for i in range(RULES)],
            expect_denied=True,
        ),
        Scenario(
            "JWT (cached) + 50 claim rules",
            "RequestAuthentication with an RS256 bearer token seen before (cache hit), then 50 ALLOW "
            "policies on requestPrincipals + a claim; the last matches",
            [jwt_policy] + [_policy(f"p{i:02d}", [_claim_rule(i, m)]) for i, m in enumerate(last_matches)],
            (*METADATA, bearer),
        ),
    ]


def _chain(policies: list[Policy], terminal: Handler, clock: Callable[[], float]) -> Handler:
    handler = terminal
    stats = Stats()
    authz = compile_authz(policies)
    if not authz.empty:
        handler = Authorization(handler, AuthorizationConfig(authz, stats))
    authn = compile_jwt_authn(policies)
    if not authn.empty:
        handler = RequestAuthentication(
            handler, RequestAuthenticationConfig(authn, JwksStore(), stats, clock)
        )
    return handler


def _terminal(head: CallHead) -> Target:
    return TARGET


def _check_decision(scenario: Scenario, chain: Handler) -> None:
    """The scenario decides as it says (a bench of the wrong decision measures nothing)."""
    try:
        target = chain(_heads(1, scenario.headers)[0])
    except MeshError as exc:
        if not scenario.expect_denied:
            raise AssertionError(f"{scenario.name}: denied: {exc}") from None
        return
    if scenario.expect_denied or target is not TARGET:
        raise AssertionError(f"{scenario.name}: allowed, expected a denial")


def _cpu_per_call_us(handler: Handler, heads: list[CallHead], expect_denied: bool) -> float:
    start = time.process_time()
    if expect_denied:
        for head in heads:
            with contextlib.suppress(MeshError):
                handler(head)
    else:
        for head in heads:
            handler(head)
    return (time.process_time() - start) / len(heads) * 1e6


def _heads(n: int, headers: tuple[tuple[bytes, bytes, bool], ...]) -> list[CallHead]:
    return [CallHead(PATH, "users", headers, CALLER, None) for _ in range(n)]


@dataclass
class Result:
    scenario: str
    what: str
    us_per_call: float  # steady traffic: the filters as the sidecar runs them (decision cached)
    runs: list[float]
    uncached_us: float  # a (caller, method) pair not seen before: every matcher run


def _uncached_us(policies: list[Policy], heads: list[CallHead], auth_chain: Handler | None) -> float:
    """Authz.check itself, as on a decision-cache miss (after the JWT filter, when there is one)."""
    authz = compile_authz(policies)
    if auth_chain is not None:
        for head in heads:
            auth_chain(head)  # fills head.auth as RequestAuthentication does
    start = time.process_time()
    for head in heads:
        authz.check(head)
    return (time.process_time() - start) / len(heads) * 1e6


def measure(calls: int, reps: int) -> tuple[list[Result], dict[str, float]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = time.time()
    claims = {"iss": ISSUER, "sub": "ada", "aud": "users", "exp": now + 3600, "groups": ["admins"]}
    tokens = {
        "RS256": jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r"}),
        "ES256": jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e"}),
    }
    keys = [
        RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "r"},
        ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "e"},
    ]
    jwks = json.dumps({"keys": keys})
    results = []
    for scenario in _scenarios(tokens, jwks):
        chain = _chain(scenario.policies, _terminal, time.time)
        _check_decision(scenario, chain)
        runs = []
        uncached = []
        authn = compile_jwt_authn(scenario.policies)
        auth_chain = _chain(
            [p for p in scenario.policies if p.kind != "AuthorizationPolicy"], _terminal, time.time
        )
        for _ in range(reps):
            base = _cpu_per_call_us(_terminal, _heads(calls, scenario.headers), False)
            cost = _cpu_per_call_us(chain, _heads(calls, scenario.headers), scenario.expect_denied)
            runs.append(cost - base)
            heads = _heads(max(calls // 10, 100), scenario.headers)
            uncached.append(_uncached_us(scenario.policies, heads, None if authn.empty else auth_chain))
        results.append(
            Result(scenario.name, scenario.what, statistics.median(runs), runs, statistics.median(uncached))
        )
    # A token not seen before: one signature check (the cache takes it from there).
    authn = compile_jwt_authn(
        [Policy("RequestAuthentication", "default", "jwt", {"jwtRules": [{"issuer": ISSUER, "jwks": jwks}]})]
    )
    verify: dict[str, float] = {}
    for algorithm, token in tokens.items():
        runs = []
        for _ in range(reps):
            n = max(calls // 50, 100)
            start = time.process_time()
            for _ in range(n):
                authn.verify(token, b"authorization", lambda rule: rule.inline_keys, now)
            runs.append((time.process_time() - start) / n * 1e6)
        verify[algorithm] = statistics.median(runs)
    return results, verify


def render(results: list[Result], verify: dict[str, float], calls: int, reps: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    goal = RELAY_US_PER_HOP * GOAL_SHARE
    lines = [
        f"# Authorization CPU per inbound call ({stamp})",
        "",
        f"Python {platform.python_version()}, {calls} calls x {reps} runs per scenario, medians; "
        f"relay cost per call per hop: {RELAY_US_PER_HOP:g} µs (bench/README.md); goal: under "
        f"{GOAL_SHARE:.0%} of it ({goal:g} µs).",
        "",
        "| scenario | added CPU µs/call | share of the relay's 70 µs | runs (µs) | uncached decision µs |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        runs = ", ".join(f"{x:.2f}" for x in r.runs)
        share = r.us_per_call / RELAY_US_PER_HOP
        lines.append(f"| {r.scenario} | {r.us_per_call:.2f} | {share:.1%} | {runs} | {r.uncached_us:.1f} |")
    lines += ["", "Scenarios:", ""]
    lines += [f"- **{r.scenario}**: {r.what}." for r in results]
    lines += [
        "",
        "Added CPU: the inbound filters on steady traffic (the decision cached per caller, method and "
        "what the rules read), minus the same loop without them. Uncached decision: `Authz.check` "
        "alone, what the first call of a new (caller, method) pair, or one with header values or a "
        "token not seen before, pays once.",
        "",
        "A token the sidecar has not verified in the last minute costs one signature check, once: "
        + ", ".join(f"{alg} {us:.0f} µs" for alg, us in verify.items())
        + ".",
    ]
    worst = max(r.us_per_call for r in results if "JWT" not in r.scenario)
    verdict = "meets" if worst < goal else "misses"
    lines += [
        "",
        f"Worst 50-rule authorization: {worst:.2f} µs/call — **{verdict} the goal** (< {goal:g} µs).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.authz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per run (default 20000)")
    parser.add_argument("--reps", type=int, default=5, help="runs per scenario (default 5)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/authz.md"), help="report file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results, verify = measure(args.calls, args.reps)
    text = render(results, verify, args.calls, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
