"""The policies under examples/policies/ stay valid: they are the documentation's examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.policy import parse_yaml, validate_all
from control_plane.resources import KINDS

ROOT = Path(__file__).resolve().parents[4]
EXAMPLES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(example: Path) -> None:
    documents = validate_all(parse_yaml(example.read_text()))
    assert documents


def test_examples_cover_every_kind() -> None:
    kinds = {d.key.kind for example in EXAMPLES for d in validate_all(parse_yaml(example.read_text()))}
    assert kinds == set(KINDS)


def test_canary_example_splits_90_10() -> None:
    (vs,) = [
        d
        for d in validate_all(parse_yaml((ROOT / "examples/policies/canary-90-10.yaml").read_text()))
        if d.key.kind == "VirtualService"
    ]
    split = vs.spec["http"][-1]["route"]
    assert [(r["destination"]["subset"], r["weight"]) for r in split] == [("v1", 90), ("v2", 10)]
