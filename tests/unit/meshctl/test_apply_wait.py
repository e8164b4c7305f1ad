"""`meshctl apply --wait`: poll the sidecar list until every connected sidecar applied the new
revision, fail on a NACK of a snapshot built for it (sentRevision at least the target), time out
listing the laggards. Runs on a fake clock, so a 30 s timeout takes no real time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl import cmd_policy
from meshctl.api_client import ControlPlaneClient, ControlPlaneUnreachable, SidecarList, SidecarStatus
from meshctl.cmd_policy import parse_duration
from meshctl.cmd_status import wait_for_revision
from tests.support.fake_control_plane import (
    FakeControlPlane,
    resource_json,
    result_json,
    sidecar_json,
    sidecars_json,
)
from tests.support.meshctl_runner import FakeClock, run_meshctl, serve_fake

VS_YAML = "kind: VirtualService\nmetadata: {name: users}\nspec: {hosts: [users]}\n"
DR_YAML = "kind: DestinationRule\nmetadata: {name: users}\nspec: {host: users}\n"
APPLY = "/api/v1/apply"
SIDECARS = "/api/v1/sidecars"


@pytest.fixture
def cp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeControlPlane]:
    yield from serve_fake(monkeypatch)


@pytest.fixture
def policy(tmp_path: Path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(VS_YAML + "---\n" + DR_YAML)
    return str(path)


def applied(cp: FakeControlPlane, vs_version: int = 12, dr_version: int = 9) -> None:
    """The apply stores the VirtualService at `vs_version`; the DestinationRule is unchanged."""
    results = [
        result_json(resource_json("users", {}, version=vs_version), "updated"),
        result_json(resource_json("users", {}, kind="DestinationRule", version=dr_version), "unchanged"),
    ]
    cp.reply("POST", APPLY, {"results": results})


def after(*sidecars: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, sidecars_json(*sidecars, revision=12)


def request_sequence(cp: FakeControlPlane) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in cp.requests]


def test_waits_until_every_connected_sidecar_applied_the_revision(
    cp: FakeControlPlane, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    applied(cp)
    old_a, old_b = sidecar_json("a", revision=10), sidecar_json("b", revision=10)
    pending_b = sidecar_json("b", revision=10, state="PENDING", sent_version="v12", sent_revision=12)
    gone = sidecar_json("gone", revision=3, connected=False)  # not connected: not waited for
    cp.replies(
        "GET",
        SIDECARS,
        [
            after(old_a, old_b, gone),
            after(sidecar_json("a", revision=12), pending_b, gone),
            after(sidecar_json("a", revision=12), sidecar_json("b", revision=13), gone),
        ],
    )
    clock = FakeClock()
    assert run_meshctl("apply", "-f", policy, "--wait", clock=clock) == 0

    # The apply, then polls until both ACK revision 12 or later: no look before the apply.
    assert request_sequence(cp) == [("POST", APPLY), ("GET", SIDECARS), ("GET", SIDECARS), ("GET", SIDECARS)]
    assert clock.sleeps == [0.1, 0.1]
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "VirtualService default/users updated (resourceVersion 12)",
        "DestinationRule default/users unchanged (resourceVersion 9)",
        "2 sidecars applied revision 12 (0.2s)",
    ]
    assert captured.err == "waiting up to 30s for every connected sidecar to apply revision 12\n"


def test_the_target_is_the_highest_revision_the_apply_returned(cp: FakeControlPlane, policy: str) -> None:
    applied(cp, vs_version=4, dr_version=20)  # an unchanged resource can carry the higher version
    cp.replies("GET", SIDECARS, [after(sidecar_json("a", revision=4)), after(sidecar_json("a", revision=20))])
    clock = FakeClock()
    assert run_meshctl("apply", "-f", policy, "--wait", clock=clock) == 0
    assert request_sequence(cp) == [("POST", APPLY), ("GET", SIDECARS), ("GET", SIDECARS)]


@pytest.mark.parametrize("sent_revision", [12, 13])
def test_a_nack_of_a_snapshot_built_for_the_revision_or_later_fails(
    cp: FakeControlPlane, policy: str, capsys: pytest.CaptureFixture[str], sent_revision: int
) -> None:
    applied(cp)
    reason = "VirtualService users: route to unknown subset v3"
    nack = sidecar_json(
        "b", revision=10, state="NACK", sent_version="v12", sent_revision=sent_revision, nackReason=reason
    )
    cp.replies(
        "GET",
        SIDECARS,
        [
            after(sidecar_json("a", revision=10), sidecar_json("b", revision=10)),
            after(sidecar_json("a"), nack),
        ],
    )
    clock = FakeClock()
    assert run_meshctl("apply", "-f", policy, "--wait", clock=clock) == 1
    assert request_sequence(cp) == [("POST", APPLY), ("GET", SIDECARS), ("GET", SIDECARS)]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"meshctl apply: error: sidecar users.default (b) rejected the config: {reason}" in captured.err
    assert "the change is stored; 1 of 2 sidecars keep serving their last good config" in captured.err
    assert "sidecars applied" not in captured.out


def test_an_older_nack_still_showing_is_not_taken_for_a_rejection(
    cp: FakeControlPlane, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    applied(cp)
    # It rejected the snapshot for revision 11; the one for 12 has not reached it yet.
    stale = sidecar_json(
        "a", revision=10, state="NACK", sent_version="v11", sent_revision=11, nackReason="bad"
    )
    cp.replies("GET", SIDECARS, [after(stale), after(stale), after(sidecar_json("a", revision=12))])
    clock = FakeClock()
    assert run_meshctl("apply", "-f", policy, "--wait", clock=clock) == 0
    assert request_sequence(cp) == [("POST", APPLY)] + [("GET", SIDECARS)] * 3
    assert "1 sidecar applied revision 12" in capsys.readouterr().out


def test_a_timeout_lists_the_sidecars_that_are_behind(
    cp: FakeControlPlane, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    applied(cp)
    lagging = sidecar_json(
        "b", service="orders", revision=10, state="PENDING", sent_version="v12", sent_revision=12
    )
    stale_nack = sidecar_json(
        "c",
        revision=10,
        state="NACK",
        sent_version="v9",
        sent_revision=9,
        nackReason="old news",
        inboundAddress="",
    )
    cp.reply("GET", SIDECARS, sidecars_json(sidecar_json("a"), lagging, stale_nack))
    clock = FakeClock()
    assert run_meshctl("apply", "-f", policy, "--wait", "--timeout", "1500ms", clock=clock) == 1

    assert sum(clock.sleeps) == pytest.approx(1.5)
    # The apply, then one look per sleep and one more at the deadline.
    assert request_sequence(cp) == [("POST", APPLY)] + [("GET", SIDECARS)] * (len(clock.sleeps) + 1)
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [
        "meshctl apply: error: timed out after 1.5s: 2 of 3 sidecars have not applied revision 12",
        "  orders.default (b) at 127.0.0.1:15006: applied revision 10, PENDING",
        "  users.default (c): applied revision 10, NACK: old news",
    ]


def test_no_connected_sidecars_is_nothing_to_wait_for(
    cp: FakeControlPlane, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    applied(cp)
    cp.reply("GET", SIDECARS, sidecars_json(sidecar_json("off", revision=1, connected=False)))
    assert run_meshctl("apply", "-f", policy, "--wait") == 0
    assert "no sidecars connected; revision 12 is stored" in capsys.readouterr().out


def test_wait_with_dry_run_is_a_usage_error(
    cp: FakeControlPlane, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_meshctl("apply", "-f", policy, "--wait", "--dry-run") == 2
    assert "--wait has nothing to wait for with --dry-run" in capsys.readouterr().err
    assert cp.requests == []


def test_a_refused_status_request_fails_the_wait_after_the_apply(
    cp: FakeControlPlane, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    applied(cp)
    cp.error("GET", SIDECARS, 403, "PERMISSION_DENIED", "role reader may not list sidecars")
    assert run_meshctl("apply", "-f", policy, "--wait") == 1
    assert request_sequence(cp) == [("POST", APPLY), ("GET", SIDECARS)]
    err = capsys.readouterr().err
    assert "meshctl apply: error: role reader may not list sidecars" in err
    assert "the change is stored (revision 12); the wait could not check the sidecars" in err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5s", 1.5), ("1h", 3600.0)],
)
def test_timeout_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_timeouts_are_read_by_the_one_duration_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def policy_parser(text: str) -> float:
        seen.append(text)
        return 7.0

    monkeypatch.setattr(cmd_policy, "parse_policy_duration", policy_parser)
    assert parse_duration("2m") == 7.0 and seen == ["2m"]


@pytest.mark.parametrize("text", ["", "0", "0s", "1.5", "-1s", "5x", "s", "1m-2s", "inf", "1d", "0.0001s"])
def test_bad_timeouts_are_usage_errors(cp: FakeControlPlane, policy: str, text: str) -> None:
    with pytest.raises(SystemExit) as info:
        run_meshctl("apply", "-f", policy, "--wait", "--timeout", text)
    assert info.value.code == 2
    assert cp.requests == []


class ScriptedClient(ControlPlaneClient):
    """Answers sidecars() from a script; an exception in the script is raised instead."""

    def __init__(self, script: list[SidecarList | Exception]) -> None:
        super().__init__("http://127.0.0.1:1")
        self.script = script

    def sidecars(self) -> SidecarList:
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


def listing(*revisions: int) -> SidecarList:
    return SidecarList(
        [SidecarStatus.from_json(sidecar_json(f"n{i}", revision=r)) for i, r in enumerate(revisions)], 12
    )


def test_a_control_plane_restart_during_the_wait_is_ridden_out() -> None:
    down = ControlPlaneUnreachable("http://127.0.0.1:1", "connection refused")
    client = ScriptedClient([listing(10), down, down, listing(12, 12)])
    clock = FakeClock()
    outcome = wait_for_revision(client, 12, timeout=5, clock=clock, sleep=clock.sleep)
    assert outcome.done and outcome.sidecars == 2
    assert outcome.elapsed == pytest.approx(0.3)


def test_a_control_plane_that_stays_away_ends_the_wait_with_its_error() -> None:
    down = ControlPlaneUnreachable("http://127.0.0.1:1", "connection refused")
    clock = FakeClock()
    outcome = wait_for_revision(ScriptedClient([down]), 12, timeout=1, clock=clock, sleep=clock.sleep)
    assert not outcome.done and not outcome.lagging and not outcome.rejected
    assert outcome.last_error == "control plane not reachable at http://127.0.0.1:1: connection refused"
    assert clock.now - 1000.0 == pytest.approx(1.0)


def nacked(node_id: str, sent_revision: int) -> SidecarStatus:
    return SidecarStatus.from_json(
        sidecar_json(node_id, revision=10, state="NACK", sent_revision=sent_revision, nackReason="bad")
    )


def test_a_nack_is_a_rejection_exactly_when_its_sent_revision_reaches_the_target() -> None:
    clock = FakeClock()
    older, exact, later = nacked("older", 11), nacked("exact", 12), nacked("later", 14)
    client = ScriptedClient([SidecarList([older, exact, later], 14)])
    outcome = wait_for_revision(client, 12, timeout=5, clock=clock, sleep=clock.sleep)
    assert [s.node_id for s in outcome.rejected] == ["exact", "later"] and not outcome.lagging

    clock = FakeClock()
    outcome = wait_for_revision(
        ScriptedClient([SidecarList([older], 14)]), 12, timeout=1, clock=clock, sleep=clock.sleep
    )
    assert not outcome.rejected and [s.node_id for s in outcome.lagging] == ["older"]
