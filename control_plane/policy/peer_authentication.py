"""PeerAuthentication: whether a workload's sidecar accepts plaintext callers.

```yaml
spec:
  selector: {matchLabels: {app: users}}   # optional; without it, the whole namespace
  mtls: {mode: STRICT}                     # STRICT (mTLS only) | PERMISSIVE (mTLS and plaintext)
```

``mtls.mode`` is required: the mesh has no inheritance (UNSET) and never turns mTLS off
(DISABLE); per-port modes (``portLevelMtls``) are not supported.
"""

from __future__ import annotations

from typing import Any

from control_plane.policy.fields import enum, fields, selector

MODES = ("STRICT", "PERMISSIVE")

_MODE_HINTS = {
    "UNSET": "inheriting a parent's mode is not supported; say which mode applies",
    "DISABLE": "the mesh does not turn mTLS off; PERMISSIVE also accepts plaintext callers",
}


def _mtls(value: object, path: str) -> dict[str, Any]:
    return fields(value, path, {"mode": enum(*MODES, hints=_MODE_HINTS)}, required=("mode",))


def validate_spec(value: object, path: str = "spec") -> dict[str, Any]:
    """The canonical PeerAuthentication spec, or Invalid naming the first problem."""
    return fields(
        value,
        path,
        {"selector": selector, "mtls": _mtls},
        required=("mtls",),
        hints={
            "portLevelMtls": "per-port modes are not supported; set mtls.mode for the workload",
            "targetRef": "select workloads with selector.matchLabels",
            "targetRefs": "select workloads with selector.matchLabels",
        },
    )
