"""`meshctl status` against a fake REST server: the table, the summary line and the JSON form."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator

import pytest

from tests.support.fake_control_plane import FakeControlPlane, sidecar_json, sidecars_json
from tests.support.meshctl_runner import run_meshctl, serve_fake

SIDECARS = "/api/v1/sidecars"


@pytest.fixture
def cp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeControlPlane]:
    yield from serve_fake(monkeypatch)


def test_every_sidecar_in_a_table_with_a_summary(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply(
        "GET",
        SIDECARS,
        sidecars_json(
            sidecar_json("users-2", labels={"version": "v2", "zone": "a"}, inboundAddress="127.0.0.1:16006"),
            sidecar_json("users-1", lastSeen="2030-06-01T11:45:00Z"),
            sidecar_json("client", service="frontend", labels={}, inboundAddress=""),
            revision=12,
        ),
    )
    assert run_meshctl("status", "--token", "abc") == 0
    assert cp.requests[0].path == SIDECARS
    assert cp.requests[0].headers["authorization"] == "Bearer abc"
    assert capsys.readouterr().out == textwrap.dedent(
        """\
        SERVICE    NAMESPACE   NODE      ADDRESS           LABELS              APPLIED   REVISION   CONNECTED   LAST SEEN   STATE
        frontend   default     client    -                 -                   v12       12         yes         3s          ACK
        users      default     users-1   127.0.0.1:15006   version=v1          v12       12         yes         15m         ACK
        users      default     users-2   127.0.0.1:16006   version=v2,zone=a   v12       12         yes         3s          ACK
        3 sidecars, all on revision 12
        """  # noqa: E501
    )


def test_the_summary_counts_the_sidecars_behind(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply(
        "GET",
        SIDECARS,
        sidecars_json(
            sidecar_json("a", revision=14),
            sidecar_json("b", revision=12, state="NACK", nackReason="unknown subset v3"),
            sidecar_json("c", revision=13, state="PENDING"),
            sidecar_json("d", revision=0, connected=False, state="PENDING", lastSeen=""),
            revision=14,
        ),
    )
    assert run_meshctl("status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("yes         3s          NACK: unknown subset v3")
    assert lines[4].split()[-4:] == ["0", "no", "-", "PENDING"]
    assert lines[-1] == "2 of 3 behind revision 14 (1 NACK); 1 disconnected"


def test_no_sidecars(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    cp.reply("GET", SIDECARS, {})
    assert run_meshctl("status") == 0
    assert capsys.readouterr().out == "no sidecars connected (store revision 0)\n"


def test_json_output_spells_out_every_field(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    cp.reply(
        "GET",
        SIDECARS,
        sidecars_json(sidecar_json("b", revision=0, connected=False, state="", serving=False), revision=7),
    )
    assert run_meshctl("status", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "storeRevision": 7,
        "sidecars": [
            {
                "nodeId": "b",
                "service": "users",
                "namespace": "default",
                "labels": {"version": "v1"},
                "inboundAddress": "127.0.0.1:15006",
                "identity": "spiffe://cluster.local/ns/default/sa/users",
                "appliedVersion": "v0",
                "sentVersion": "v12",
                "state": "PENDING",
                "nackReason": "",
                "lastSeen": "2030-06-01T11:59:57Z",
                "connected": False,
                "serving": False,
                "adminAddress": "127.0.0.1:15000",
                "appliedRevision": 0,
                "sentRevision": 0,  # absent from the reply: zero
                "identityVerified": False,
                "certificateSerial": "",
                "certificateNotAfter": "",
            }
        ],
        "summary": {"connected": 0, "behind": 0, "disconnected": 1},
    }


def test_status_errors(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    cp.error("GET", SIDECARS, 403, "PERMISSION_DENIED", "token lacks the reader role")
    assert run_meshctl("status") == 1
    assert capsys.readouterr().err == "meshctl status: error: token lacks the reader role\n"
    cp.reply("GET", SIDECARS, {"sidecars": [{"nodeId": "x", "appliedRevision": "twelve"}]})
    assert run_meshctl("status") == 1
    assert "sidecar.appliedRevision: expected an integer, got 'twelve'" in capsys.readouterr().err
    assert run_meshctl("status", "--server", "http://") == 2


def test_wide_output_shows_each_certificate(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    cp.reply(
        "GET",
        SIDECARS,
        sidecars_json(
            sidecar_json(
                "users-1",
                identityVerified=True,
                certificateSerial="1f2e3d",
                certificateNotAfter="2030-06-01T23:00:00Z",
            ),
            sidecar_json("users-2", inboundAddress="127.0.0.1:16006"),
            revision=12,
        ),
    )
    assert run_meshctl("status", "-o", "wide") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "IDENTITY" in lines[0] and "CERT SERIAL" in lines[0] and "CERT NOT AFTER" in lines[0]
    assert lines[1].split()[-5:] == [
        "spiffe://cluster.local/ns/default/sa/users",
        "yes",
        "1f2e3d",
        "2030-06-01",
        "23:00:00Z",
    ]
    assert lines[2].split()[-4:] == ["spiffe://cluster.local/ns/default/sa/users", "no", "-", "-"]
