"""parse_yaml: multi-document YAML (and JSON) text → documents, with errors naming the line."""

from __future__ import annotations

import time

import pytest

from control_plane.policy import (
    MAX_DOCUMENT_BYTES,
    MAX_DOCUMENTS,
    MAX_YAML_BYTES,
    ValidationError,
    parse_yaml,
    validate_all,
)

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
    assert (err.line, err.column) == (23, 7)
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
    assert (err.line, err.column) == (4, 3)


def test_merge_keys_may_be_overridden() -> None:
    text = "base: &b {mode: STRICT, x: 1}\nmtls:\n  <<: *b\n  mode: PERMISSIVE\n"
    assert parse_yaml(text)[0]["mtls"] == {"mode": "PERMISSIVE", "x": 1}


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", 'the string "a"'),
        ("- [a]\n", "a list"),
        ("just text\n", 'the string "just text"'),
        ("42\n", "the number 42"),
    ],
)
def test_a_document_must_be_a_mapping(text: str, got: str) -> None:
    err = parse_error("kind: A\n---\n" + text)
    assert str(err) == f"document 2: must be a mapping (apiVersion, kind, ...), got {got}"


def test_a_list_is_a_json_array_of_documents() -> None:
    text = '[{"kind": "A"}, {"kind": "B"}]\n---\nkind: C\n---\n[]\n'
    assert parse_yaml(text) == [{"kind": "A"}, {"kind": "B"}, {"kind": "C"}]
    err = parse_error('[{"kind": "A"}, 7]\n')
    assert str(err) == "document 2: must be a mapping (apiVersion, kind, ...), got the number 7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: VirtualService\nspec:\n  on: true\n",
            "document 1: spec: key True is not a string "
            "(YAML reads it as the boolean true, as it does on/off/yes/no; quote it)",
        ),
        ("a: {1: x}\n", "document 1: a: key 1 is not a string (YAML reads it as the number 1; quote it)"),
        ("spec: {when: 2030-06-01}\n", "document 1: spec.when: YAML reads this value as a date, which JSON"),
        ("spec: [2030-06-01T10:00:00Z]\n", "document 1: spec[0]: YAML reads this value as a timestamp"),
        ("a: !!binary aGVsbG8=\n", "document 1: a: YAML reads this value as binary (!!binary)"),
        ("a: !!set {x}\n", "document 1: a: YAML reads this value as a set (!!set)"),
        ("a: {w: .nan}\n", "document 1: a.w: nan is not a number JSON can carry"),
        ("a: -.inf\n", "document 1: a: -inf is not a number JSON can carry"),
        (
            "kind: VirtualService\nmetadata: {name: users}\nspec: {when: 2030-06-01}\n",
            "VirtualService users: spec.when: YAML reads this value as a date",
        ),
    ],
)
def test_values_json_cannot_carry_are_refused(text: str, expected: str) -> None:
    assert str(parse_error(text)).startswith(expected)


def alias_bomb(levels: int) -> str:
    """A short text whose aliases expand to 10**levels strings."""
    lines = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"  a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: users}\nspec:\n" + (
        "\n".join(lines) + "\n"
    )


def test_an_alias_bomb_is_refused_before_anything_expands_it() -> None:
    text = alias_bomb(8)  # 10**8 strings from under 600 bytes
    assert len(text) < 600
    started = time.monotonic()
    err = parse_error(text)
    assert time.monotonic() - started < 1.0
    assert str(err) == "VirtualService users: larger than 256 KiB as JSON (the limit per document)"


def test_aliases_cannot_make_a_list_of_documents_expand_past_the_texts_limit() -> None:
    big = "{kind: A, spec: {note: " + "x" * (MAX_DOCUMENT_BYTES - 100) + "}}"
    text = f"- &d {big}\n" + "- *d\n" * (MAX_YAML_BYTES // MAX_DOCUMENT_BYTES + 1)
    err = parse_error(text)
    assert str(err) == "input: larger than 4 MiB as JSON (with aliases expanded)"


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
