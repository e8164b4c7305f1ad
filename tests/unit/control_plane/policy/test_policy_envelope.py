"""The document envelope (apiVersion, kind, metadata, spec), how errors name documents, batches
and size limits."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from control_plane.policy import (
    MAX_DOCUMENT_BYTES,
    MAX_DOCUMENTS,
    Document,
    ValidationError,
    document_label,
    validate,
    validate_all,
)
from control_plane.resources import KINDS, ResourceKey
from tests.support.policy_docs import DELETE, check_error, doc, edit, invalid

PA = doc("PeerAuthentication", {"mtls": {"mode": "STRICT"}}, name="default")
VS = doc("VirtualService", {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}}]}]})


def test_validation_error_formats_document_path_and_reason() -> None:
    err = ValidationError("VirtualService users", "spec.http[0].route", "weights sum to 90, must be 100")
    assert (err.document, err.path, err.reason) == (
        "VirtualService users",
        "spec.http[0].route",
        "weights sum to 90, must be 100",
    )
    assert str(err) == "VirtualService users: spec.http[0].route: weights sum to 90, must be 100"
    assert (
        str(ValidationError("document 2", "", "invalid YAML: x at line 3"))
        == "document 2: invalid YAML: x at line 3"
    )


@pytest.mark.parametrize(
    ("kind", "api_version"),
    [
        ("VirtualService", "networking.istio.io/v1"),
        ("VirtualService", "networking.istio.io/v1beta1"),
        ("VirtualService", "networking.istio.io/v1alpha3"),
        ("DestinationRule", "networking.istio.io/v1alpha3"),
        ("PeerAuthentication", "security.istio.io/v1"),
        ("AuthorizationPolicy", "security.istio.io/v1beta1"),
        ("RequestAuthentication", "security.istio.io/v1beta1"),
        ("RateLimitPolicy", "policy.grpc-mesh.io/v1alpha1"),
    ],
)
def test_accepted_api_versions(kind: str, api_version: str) -> None:
    specs: dict[str, Any] = {
        "VirtualService": VS["spec"],
        "DestinationRule": {"host": "users"},
        "PeerAuthentication": {"mtls": {"mode": "STRICT"}},
        "AuthorizationPolicy": {},
        "RequestAuthentication": {"jwtRules": [{"issuer": "i", "jwksUri": "https://i/jwks"}]},
        "RateLimitPolicy": {"rules": [{"limit": {"tokensPerInterval": 1, "interval": "1s"}}]},
    }
    document = {**doc(kind, specs[kind]), "apiVersion": api_version}
    assert validate(document).key.kind == kind


def test_document_fields() -> None:
    document = validate(
        edit(
            edit(edit(VS, "metadata.namespace", "prod"), "metadata.labels", {"team": "id"}),
            "metadata.annotations",
            {"note": "any text: ok"},
        )
    )
    assert document == Document(ResourceKey("VirtualService", "prod", "users"), VS["spec"], None)
    assert document.delete is False


def test_validation_error_pickles() -> None:
    err = ValidationError("VirtualService users", "spec.hosts", "required")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.document, copy.path, copy.reason, str(copy)) == (
        err.document,
        err.path,
        err.reason,
        str(err),
    )


def test_long_values_are_cut_short_in_messages() -> None:
    err = invalid(edit(VS, "spec.hosts", ["X" * 10_000]))
    assert len(str(err)) < 300, str(err)


def test_namespace_defaults_to_default() -> None:
    assert validate(VS).key == ResourceKey("VirtualService", "default", "users")


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (12, 12), ("12", 12), ("0", 0), (None, None)])
def test_resource_version(value: Any, expected: int | None) -> None:
    assert validate(edit(VS, "metadata.resourceVersion", value)).expected_version == expected


BAD: list[tuple[str, Any, str, str, str]] = [
    # (field, value, document label, path, reason)
    (
        "apiVersion",
        DELETE,
        "VirtualService users",
        "apiVersion",
        "required; VirtualService takes networking.istio.io/v1",
    ),
    (
        "apiVersion",
        "security.istio.io/v1",
        "VirtualService users",
        "apiVersion",
        '="security.istio.io/v1" is not an apiVersion of VirtualService; use networking.istio.io/v1, '
        "networking.istio.io/v1beta1 or networking.istio.io/v1alpha3",
    ),
    ("apiVersion", "networking.istio.io/v2", "VirtualService users", "apiVersion", "is not an apiVersion"),
    ("apiVersion", 1, "VirtualService users", "apiVersion", "the number 1 is not an apiVersion"),
    ("kind", DELETE, "document 1", "kind", "required; one of VirtualService, DestinationRule"),
    (
        "kind",
        "Gateway",
        "document 1",
        "kind",
        '="Gateway" is not a supported kind; supported kinds: VirtualService, DestinationRule, '
        "PeerAuthentication, AuthorizationPolicy, RequestAuthentication, RateLimitPolicy",
    ),
    ("kind", "virtualservice", "document 1", "kind", "is not a supported kind"),
    ("kind", ["VirtualService"], "document 1", "kind", "a list is not a supported kind"),
    ("metadata", DELETE, "document 1", "metadata", "required"),
    ("metadata", "users", "document 1", "metadata", "must be a mapping"),
    ("metadata.name", DELETE, "document 1", "metadata.name", "=required"),
    ("metadata.name", "Users", "VirtualService Users", "metadata.name", '"Users" is not a valid name'),
    ("metadata.name", "users_v2", "VirtualService users_v2", "metadata.name", "is not a valid name"),
    ("metadata.name", "-users", "VirtualService -users", "metadata.name", "is not a valid name"),
    ("metadata.name", "u" * 64, "VirtualService " + "u" * 64, "metadata.name", "at most 63"),
    ("metadata.name", "", "document 1", "metadata.name", "must not be empty"),
    ("metadata.name", 5, "document 1", "metadata.name", "must be a string"),
    ("metadata.namespace", "Prod", "VirtualService Prod/users", "metadata.namespace", "is not a valid name"),
    (
        "metadata.resourceVersion",
        -1,
        "VirtualService users",
        "metadata.resourceVersion",
        "non-negative integer",
    ),
    (
        "metadata.resourceVersion",
        "v1",
        "VirtualService users",
        "metadata.resourceVersion",
        'got the string "v1"',
    ),
    (
        "metadata.resourceVersion",
        True,
        "VirtualService users",
        "metadata.resourceVersion",
        "non-negative integer",
    ),
    (
        "metadata.resourceVersion",
        1.5,
        "VirtualService users",
        "metadata.resourceVersion",
        "non-negative integer",
    ),
    ("metadata.labels", {"team": 1}, "VirtualService users", "metadata.labels.team", "must be a string"),
    ("metadata.annotations", {"note": None}, "VirtualService users", "metadata.annotations.note", "got null"),
    (
        "metadata.annotations",
        {"a/b/c": "x"},
        "VirtualService users",
        'metadata.annotations["a/b/c"]',
        "not a label key",
    ),
    (
        "metadata.uid",
        "1234",
        "VirtualService users",
        "metadata.uid",
        "field not supported; it is set by the server",
    ),
    ("metadata.finalizers", [], "VirtualService users", "metadata.finalizers", "field not supported"),
    ("spec", DELETE, "VirtualService users", "spec", "=required"),
    ("spec", [], "VirtualService users", "spec", "must be a mapping"),
    ("status", {}, "VirtualService users", "status", "field not supported; status is set by the server"),
    (
        "Spec",
        {},
        "VirtualService users",
        "Spec",
        "field not supported (supported here: apiVersion, kind, metadata, spec)",
    ),
]


@pytest.mark.parametrize(
    ("field", "value", "label", "path", "reason"), BAD, ids=[f"{c[0]}={c[1]!r}"[:60] for c in BAD]
)
def test_invalid_envelope(field: str, value: Any, label: str, path: str, reason: str) -> None:
    check_error(edit(VS, field, value), path, reason, label=label)


def test_document_that_is_not_a_mapping() -> None:
    err = invalid(["not", "a", "mapping"], index=4)
    assert str(err) == "document 5: must be a mapping (apiVersion, kind, metadata, spec), got a list"


def test_non_string_field_name() -> None:
    check_error(
        edit(VS, "spec", {"hosts": ["users"], 1: "x"}),
        "spec",
        "field names must be strings, got the number 1",
    )


@pytest.mark.parametrize(
    ("document", "index", "label"),
    [
        (VS, 0, "VirtualService users"),
        (edit(VS, "metadata.namespace", "default"), 0, "VirtualService users"),
        (edit(VS, "metadata.namespace", "prod"), 0, "VirtualService prod/users"),
        (edit(VS, "kind", "Gateway"), 1, "document 2"),
        (edit(VS, "metadata.name", DELETE), 2, "document 3"),
        (edit(VS, "metadata.name", "has space"), 0, "document 1"),
        ("text", 0, "document 1"),
    ],
)
def test_document_label(document: Any, index: int, label: str) -> None:
    assert document_label(document, index) == label


def test_validate_all_returns_every_document_in_order() -> None:
    documents = validate_all([VS, PA, edit(VS, "metadata.namespace", "prod")])
    assert [str(d.key) for d in documents] == [
        "VirtualService default/users",
        "PeerAuthentication default/default",
        "VirtualService prod/users",
    ]
    assert validate_all([]) == []


def test_validate_all_stops_at_the_first_error_naming_its_position() -> None:
    with pytest.raises(ValidationError) as info:
        validate_all([VS, edit(PA, "kind", "Sidecar"), edit(PA, "spec.mtls.mode", "DISABLE")])
    assert info.value.document == "document 2"
    assert info.value.path == "kind"


def test_validate_all_refuses_the_same_resource_twice() -> None:
    with pytest.raises(ValidationError) as info:
        validate_all([VS, PA, edit(VS, "metadata.namespace", "default")])
    assert str(info.value) == (
        "VirtualService users: metadata.name: VirtualService default/users is already in this batch "
        "(document 1); give each resource once"
    )


def test_same_name_in_another_namespace_or_kind_is_not_a_duplicate() -> None:
    dr = doc("DestinationRule", {"host": "users"})
    assert len(validate_all([VS, edit(VS, "metadata.namespace", "prod"), dr])) == 3


def test_batch_size_limit() -> None:
    batch = [edit(PA, "metadata.name", f"p{i}") for i in range(MAX_DOCUMENTS)]
    assert len(validate_all(batch)) == MAX_DOCUMENTS
    with pytest.raises(ValidationError) as info:
        validate_all([*batch, edit(PA, "metadata.name", "one-more")])
    assert (
        str(info.value)
        == f"batch: {MAX_DOCUMENTS + 1} documents; at most {MAX_DOCUMENTS} can be applied together"
    )


def test_document_size_limit() -> None:
    just_small = edit(VS, "metadata.annotations", {"note": "x" * (MAX_DOCUMENT_BYTES - 1000)})
    validate(just_small)
    too_big = edit(VS, "metadata.annotations", {"note": "x" * MAX_DOCUMENT_BYTES})
    check_error(
        too_big, "", "=larger than 256 KiB as JSON (the limit per document)", label="VirtualService users"
    )


def test_many_small_values_count_towards_the_size_limit() -> None:
    hosts = [f"h{i}" for i in range(60_000)]
    check_error(edit(VS, "spec.hosts", hosts), "", "larger than 256 KiB")


def test_shared_references_cannot_make_the_size_check_expensive() -> None:
    # What YAML aliases produce: one list referenced many times (a "billion laughs").
    level: Any = ["x"] * 10
    for _ in range(9):
        level = [level] * 10
    check_error(edit(VS, "spec.hosts", level), "", "larger than 256 KiB")


def test_nesting_limit() -> None:
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    check_error(edit(VS, "spec.hosts", deep), "", "=nested more than 32 levels deep")


def test_kinds_all_have_a_validator() -> None:
    assert len(KINDS) == 6
