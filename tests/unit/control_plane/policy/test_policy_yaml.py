"""parse_yaml: multi-document YAML (and JSON) text → documents, with errors naming the line."""

from __future__ import annotations

import pytest

from control_plane.policy import MAX_DOCUMENTS, MAX_YAML_BYTES, ValidationError, parse_yaml, validate_all

TWO = """\
# leading comment
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
---
---
# an empty document is skipped
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: users
  resourceVersion: "7"
spec:
  host: users
...
"""


def parse_error(text: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_yaml(text)
    return info.value


def test_multi_document_text() -> None:
    documents = parse_yaml(TWO)
    assert [d["kind"] for d in documents] == ["PeerAuthentication", "DestinationRule"]
    validated = validate_all(documents)
    assert validated[1].expected_version == 7


@pytest.mark.parametrize("text", ["", "\n", "---\n", "# only a comment\n", "---\n...\n---\n"])
def test_empty_input_has_no_documents(text: str) -> None:
    assert parse_yaml(text) == []


def test_json_is_yaml() -> None:
    assert parse_yaml('{"kind": "DestinationRule", "spec": {"host": "users"}}') == [
        {"kind": "DestinationRule", "spec": {"host": "users"}}
    ]


def test_invalid_yaml_names_the_document_and_line() -> None:
    text = TWO + "---\nkind: VirtualService\nspec:\n  hosts: [users\n  http: []\n"
    err = parse_error(text)
    assert err.document == "document 3"
    assert err.path == ""
    assert err.reason.startswith("invalid YAML: ")
    assert "line 23" in err.reason, err.reason
    assert str(err) == f"document 3: {err.reason}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("kind: [\n", "invalid YAML: "),
        ("a: b: c\n", "invalid YAML: mapping values are not allowed here at line 1, column 5"),
        ("spec:\n\thosts: []\n", "invalid YAML: found character '\\t' that cannot start any token at line 2"),
        ("a: *nope\n", "invalid YAML: found undefined alias 'nope' at line 1"),
        ("a: !!python/object:os.system {}\n", "invalid YAML: could not determine a constructor"),
    ],
)
def test_invalid_yaml(text: str, reason: str) -> None:
    err = parse_error(text)
    assert err.document == "document 1"
    assert err.reason.startswith(reason), err.reason


def test_duplicate_keys_are_refused_not_last_one_wins() -> None:
    err = parse_error("kind: VirtualService\nspec:\n  hosts: [a]\n  hosts: [b]\n")
    assert str(err) == "document 1: invalid YAML: found duplicate key 'hosts' at line 4, column 3"


def test_merge_keys_may_be_overridden() -> None:
    text = "base: &b {mode: STRICT, x: 1}\nmtls:\n  <<: *b\n  mode: PERMISSIVE\n"
    assert parse_yaml(text)[0]["mtls"] == {"mode": "PERMISSIVE", "x": 1}


@pytest.mark.parametrize(
    ("text", "got"),
    [("- a\n- b\n", "a list"), ("just text\n", 'the string "just text"'), ("42\n", "the number 42")],
)
def test_a_document_must_be_a_mapping(text: str, got: str) -> None:
    err = parse_error("kind: A\n---\n" + text)
    assert str(err) == f"document 2: must be a mapping (apiVersion, kind, ...), got {got}"


def test_deep_nesting_is_refused_by_parse_or_validate() -> None:
    text = "kind: VirtualService\nmetadata: {name: users}\nspec: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(ValidationError) as info:
        validate_all(parse_yaml(text))
    assert "nested" in info.value.reason, str(info.value)


def test_too_many_documents() -> None:
    text = "---\nkind: A\n" * (MAX_DOCUMENTS + 1)
    err = parse_error(text)
    assert str(err) == f"input: more than {MAX_DOCUMENTS} documents; split the input"
    assert len(parse_yaml("---\nkind: A\n" * MAX_DOCUMENTS)) == MAX_DOCUMENTS


def test_text_size_limit() -> None:
    err = parse_error("#" * (MAX_YAML_BYTES + 1))
    assert str(err) == "input: larger than 4 MiB"
    err = parse_error("# " + "é" * (MAX_YAML_BYTES // 2))  # under the limit in characters, over it in bytes
    assert err.document == "input"
