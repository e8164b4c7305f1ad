"""PeerAuthentication: STRICT or PERMISSIVE, namespace-wide or for selected workloads."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.policy import validate
from tests.support.policy_docs import DELETE, check_error, doc, edit

BASE = doc("PeerAuthentication", {"mtls": {"mode": "STRICT"}}, name="default")


def test_strict_for_the_namespace() -> None:
    document = validate(BASE)
    assert str(document.key) == "PeerAuthentication default/default"
    assert document.spec == {"mtls": {"mode": "STRICT"}}


def test_permissive_for_one_workload() -> None:
    spec = {"selector": {"matchLabels": {"app": "legacy"}}, "mtls": {"mode": "PERMISSIVE"}}
    assert validate(doc("PeerAuthentication", spec, name="legacy", namespace="batch")).spec == spec


BAD: list[tuple[str, Any, str, str]] = [
    ("spec.mtls", DELETE, "spec.mtls", "=required"),
    ("spec.mtls", {}, "spec.mtls.mode", "=required"),
    (
        "spec.mtls.mode",
        "DISABLE",
        "spec.mtls.mode",
        'must be one of STRICT or PERMISSIVE, got "DISABLE"; the mesh',
    ),
    (
        "spec.mtls.mode",
        "UNSET",
        "spec.mtls.mode",
        'must be one of STRICT or PERMISSIVE, got "UNSET"; inheriting',
    ),
    ("spec.mtls.mode", "strict", "spec.mtls.mode", "must be one of STRICT or PERMISSIVE"),
    ("spec.mtls.mode", True, "spec.mtls.mode", "must be one of STRICT or PERMISSIVE, got the boolean true"),
    (
        "spec.portLevelMtls",
        {"8080": {"mode": "DISABLE"}},
        "spec.portLevelMtls",
        "field not supported; per-port modes",
    ),
    ("spec.selector", {}, "spec.selector.matchLabels", "=required"),
    ("spec.selector", {"matchLabels": {}}, "spec.selector.matchLabels", "omit selector"),
    ("spec.selector", {"matchLabels": {"app": ["a"]}}, "spec.selector.matchLabels.app", "must be a string"),
    ("spec.selector", {"matchExpressions": []}, "spec.selector.matchExpressions", "field not supported"),
    ("spec.targetRef", {}, "spec.targetRef", "field not supported"),
]


@pytest.mark.parametrize(
    ("field", "value", "path", "reason"), BAD, ids=[f"{c[0]}={c[1]!r}"[:80] for c in BAD]
)
def test_invalid(field: str, value: Any, path: str, reason: str) -> None:
    check_error(edit(BASE, field, value), path, reason, label="PeerAuthentication default")
