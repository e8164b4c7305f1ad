"""`meshctl apply | get | delete | history | rollback` against a fake REST server: the requests
each command sends, what it prints, and its exit codes."""

from __future__ import annotations

import io
import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.fake_control_plane import FakeControlPlane, resource_json, result_json
from tests.support.meshctl_runner import run_meshctl, serve_fake

USERS_SPEC: dict[str, Any] = {
    "hosts": ["users"],
    "http": [{"route": [{"destination": {"host": "users", "subset": "v1"}, "weight": 100}]}],
}
USERS_YAML = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: users
spec:
  hosts: [users]
  http:
  - route:
    - destination: {host: users, subset: v1}
      weight: 100
"""
DR_YAML = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: users, namespace: prod}
spec:
  host: users
  subsets: [{name: v1, labels: {version: v1}}]
"""


@pytest.fixture
def cp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeControlPlane]:
    yield from serve_fake(monkeypatch)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def no_traceback(captured: tuple[str, str]) -> None:
    assert not any("Traceback" in text for text in captured)


# --- apply -----------------------------------------------------------------------------------


def test_apply_sends_every_document_in_order_and_prints_one_line_per_result(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vs = resource_json("users", USERS_SPEC, version=12)
    dr = resource_json("users", {"host": "users"}, kind="DestinationRule", namespace="prod", version=11)
    cp.reply("POST", "/api/v1/apply", {"results": [result_json(vs, "created"), result_json(dr, "unchanged")]})
    first = write(tmp_path, "vs.yaml", "---\n" + USERS_YAML + "---\n")  # empty documents are skipped
    second = write(tmp_path, "dr.yaml", DR_YAML)

    assert run_meshctl("apply", "-f", first, "-f", second, "--token", "t0k3n") == 0

    (request,) = cp.requests
    assert (request.method, request.path) == ("POST", "/api/v1/apply")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer t0k3n"
    assert request.body == {
        "documents": [yaml.safe_load(USERS_YAML), yaml.safe_load(DR_YAML)],
        "dryRun": False,
    }
    assert capsys.readouterr().out.splitlines() == [
        "VirtualService default/users created (resourceVersion 12)",
        "DestinationRule prod/users unchanged (resourceVersion 11)",
    ]


def test_apply_reads_standard_input(
    cp: FakeControlPlane, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply(
        "POST", "/api/v1/apply", {"results": [result_json(resource_json("users", USERS_SPEC), "updated")]}
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(USERS_YAML + "---\n" + DR_YAML))
    assert run_meshctl("apply", "-f", "-") == 0
    assert [d["kind"] for d in cp.requests[0].body["documents"]] == ["VirtualService", "DestinationRule"]
    assert "authorization" not in cp.requests[0].headers
    assert capsys.readouterr().out == "VirtualService default/users updated (resourceVersion 12)\n"


def test_apply_reads_the_yaml_files_of_a_directory_in_name_order(
    cp: FakeControlPlane, tmp_path: Path
) -> None:
    cp.reply("POST", "/api/v1/apply", {"results": []})
    write(tmp_path, "b.yml", DR_YAML)
    write(tmp_path, "a.yaml", USERS_YAML)
    write(tmp_path, "notes.txt", "not: a policy")
    assert run_meshctl("apply", "-f", str(tmp_path)) == 0
    assert [d["kind"] for d in cp.requests[0].body["documents"]] == ["VirtualService", "DestinationRule"]


def test_apply_dry_run_asks_for_a_dry_run_and_prints_the_diff(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    diff = "--- VirtualService default/users (resourceVersion 12)\n+++ VirtualService default/users\n-a\n+b\n"
    resource = resource_json("users", USERS_SPEC, version=0)
    del resource["resourceVersion"]
    cp.reply("POST", "/api/v1/apply", {"results": [result_json(resource, "updated", diff)]})
    assert run_meshctl("apply", "--dry-run", "-f", write(tmp_path, "vs.yaml", USERS_YAML)) == 0
    assert cp.requests[0].body["dryRun"] is True
    assert capsys.readouterr().out == "VirtualService default/users updated (dry run)\n" + diff


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: VirtualService\nspec:\n  hosts: [users\n",
            "bad.yaml:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'\n",
        ),
        (
            "kind: VirtualService\n  name: x\n",
            "bad.yaml:2:7: invalid YAML: mapping values are not allowed here\n",
        ),
        (
            USERS_YAML + "---\n- just\n- a list\n",
            'bad.yaml: document 2: must be a mapping (apiVersion, kind, ...), got the string "just"',
        ),
        (
            "---\n'a string'\n",
            "bad.yaml: document 1: must be a mapping (apiVersion, kind, ...), got the string",
        ),
        (
            "kind: VirtualService\nspec:\n  on: true\n",
            "spec: key True is not a string (YAML reads it as the boolean",
        ),
        ("kind: VirtualService\nspec:\n  when: 2030-06-01\n", "spec.when: YAML reads this value as a date"),
        ("kind: VirtualService\nspec:\n  weight: .nan\n", "spec.weight: nan is not a number JSON can carry"),
        (
            USERS_YAML.replace("  hosts: [users]\n", "  hosts: [users]\n  hosts: [orders]\n"),
            "bad.yaml:7:3: invalid YAML: found duplicate key 'hosts'\n",
        ),
        (
            USERS_YAML.replace("metadata:\n  name: users\n", "metadata:\n  name: users\n  name: orders\n"),
            "bad.yaml:5:3: invalid YAML: found duplicate key 'name'\n",
        ),
    ],
)
def test_apply_refuses_bad_yaml_naming_the_file_and_line_and_sends_nothing(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    good = write(tmp_path, "good.yaml", DR_YAML)
    bad = write(tmp_path, "bad.yaml", text)
    assert run_meshctl("apply", "-f", good, "-f", bad) == 2
    captured = capsys.readouterr()
    no_traceback(captured)
    assert captured.err.startswith("meshctl apply: error: ")
    assert expected in captured.err
    assert captured.out == ""
    assert cp.requests == []


def test_apply_needs_at_least_one_document(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = write(tmp_path, "empty.yaml", "# nothing here\n---\n")
    assert run_meshctl("apply", "-f", empty) == 2
    assert capsys.readouterr().err == f"meshctl apply: error: no documents in {empty}\n"
    assert cp.requests == []


def test_apply_refuses_a_missing_file_and_stdin_twice(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_meshctl("apply", "-f", str(tmp_path / "missing.yaml")) == 2
    assert f"cannot read {tmp_path / 'missing.yaml'}: No such file or directory" in capsys.readouterr().err
    assert run_meshctl("apply", "-f", "-", "-f", "-") == 2
    assert "only once" in capsys.readouterr().err
    assert cp.requests == []


def test_apply_reports_the_servers_validation_error(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "VirtualService users: spec.http[0].route: weights sum to 90, must be 100"
    cp.error(
        "POST",
        "/api/v1/apply",
        400,
        "INVALID_ARGUMENT",
        message,
        document="VirtualService users",
        field="spec.http[0].route",
        reason="weights sum to 90, must be 100",
    )
    assert run_meshctl("apply", "-f", write(tmp_path, "vs.yaml", USERS_YAML)) == 1
    captured = capsys.readouterr()
    no_traceback(captured)
    assert captured.err == f"meshctl apply: error: {message}\n"
    assert captured.out == ""


def test_server_error_details_the_message_leaves_out_are_shown(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.error(
        "POST", "/api/v1/apply", 409, "ABORTED", "resourceVersion 3 is stale", document="VirtualService users"
    )
    assert run_meshctl("apply", "-f", write(tmp_path, "vs.yaml", USERS_YAML)) == 1
    assert capsys.readouterr().err.splitlines() == [
        "meshctl apply: error: resourceVersion 3 is stale",
        "  document: VirtualService users",
    ]


def test_unauthenticated_gets_a_hint_about_tokens(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.error("GET", "/api/v1/resources", 401, "UNAUTHENTICATED", "a bearer token is required")
    assert run_meshctl("get", "vs") == 1
    err = capsys.readouterr().err
    assert "meshctl get: error: a bearer token is required" in err
    assert "--token" in err and "MESHCTL_TOKEN" in err


def test_an_error_without_a_json_body_still_says_what_happened(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply("GET", "/api/v1/resources", b"upstream exploded", status=502)
    assert run_meshctl("get", "vs") == 1
    assert capsys.readouterr().err == "meshctl get: error: HTTP 502 Bad Gateway: upstream exploded\n"


def test_a_success_that_is_not_json_is_an_error(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply("GET", "/api/v1/resources", b"<html>hello</html>")
    assert run_meshctl("get", "vs") == 1
    captured = capsys.readouterr()
    no_traceback(captured)
    assert "not JSON: <html>hello</html>" in captured.err


def test_a_closed_port_says_the_control_plane_is_not_reachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("MESHCTL_SERVER", raising=False)
    assert run_meshctl("get", "vs", "--server", f"127.0.0.1:{port}") == 1
    captured = capsys.readouterr()
    no_traceback(captured)
    assert captured.err == (
        f"meshctl get: error: control plane not reachable at http://127.0.0.1:{port}: connection refused\n"
    )


# --- connection flags ------------------------------------------------------------------------


def test_token_from_environment_and_file(
    cp: FakeControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp.reply("GET", "/api/v1/resources", {"resources": []})
    monkeypatch.setenv("MESHCTL_TOKEN", "from-env")
    assert run_meshctl("get", "vs") == 0
    token_file = write(tmp_path, "token", "from-file\n")
    assert run_meshctl("get", "vs", "--token-file", token_file) == 0
    assert run_meshctl("get", "vs", "--token", "from-flag") == 0
    assert [r.headers["authorization"] for r in cp.requests] == [
        "Bearer from-env",
        "Bearer from-file",
        "Bearer from-flag",
    ]


def test_bad_connection_flags_are_usage_errors(
    cp: FakeControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_meshctl("get", "vs", "--token-file", str(tmp_path / "nope")) == 2
    assert "cannot read token file" in capsys.readouterr().err
    assert run_meshctl("get", "vs", "--token-file", write(tmp_path, "empty", "\n")) == 2
    assert "is empty" in capsys.readouterr().err
    assert run_meshctl("get", "vs", "--server", "ftp://example.com") == 2
    assert "--server: 'ftp://example.com' is not an http:// or https:// URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run_meshctl("get", "vs", "--token", "a", "--token-file", "b")
    assert info.value.code == 2
    assert cp.requests == []


def test_server_flag_beats_the_environment(cp: FakeControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    cp.reply("GET", "/api/v1/resources", {"resources": []})
    monkeypatch.setenv("MESHCTL_SERVER", "http://127.0.0.1:1")
    assert run_meshctl("get", "vs", "--server", cp.url + "/") == 0
    assert len(cp.requests) == 1


# --- get -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "kind"),
    [
        ("vs", "VirtualService"),
        ("VS", "VirtualService"),
        ("virtualservice", "VirtualService"),
        ("VirtualServices", "VirtualService"),
        ("dr", "DestinationRule"),
        ("destinationrules", "DestinationRule"),
        ("DestinationRule", "DestinationRule"),
        ("pa", "PeerAuthentication"),
        ("peerauthentications", "PeerAuthentication"),
        ("ap", "AuthorizationPolicy"),
        ("authorizationpolicy", "AuthorizationPolicy"),
        ("AuthorizationPolicies", "AuthorizationPolicy"),
        ("ra", "RequestAuthentication"),
        ("requestauthentications", "RequestAuthentication"),
        ("rl", "RateLimitPolicy"),
        ("ratelimitpolicies", "RateLimitPolicy"),
    ],
)
def test_kind_aliases(cp: FakeControlPlane, alias: str, kind: str) -> None:
    cp.reply("GET", "/api/v1/resources", {"resources": []})
    assert run_meshctl("get", alias) == 0
    assert cp.requests[0].query == {"kind": kind, "namespace": "default"}


def test_an_unknown_kind_is_a_usage_error_listing_the_kinds(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_meshctl("get", "gateway") == 2
    err = capsys.readouterr().err
    assert (
        "unknown kind 'gateway'" in err
        and "VirtualService (vs)" in err
        and "RequestAuthentication (ra)" in err
    )
    assert cp.requests == []


def test_get_lists_a_namespace_as_a_table(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    cp.reply(
        "GET",
        "/api/v1/resources",
        {
            "resources": [
                resource_json("users", USERS_SPEC, version=12, update_time="2030-06-01T11:58:00Z"),
                resource_json("orders", {"hosts": ["orders", "orders.prod"]}, version=7,
                              update_time="2030-05-30T11:00:00.123456789Z"),
            ]
        },
    )  # fmt: skip
    assert run_meshctl("get", "vs", "-n", "default") == 0
    assert capsys.readouterr().out == textwrap.dedent(
        """\
        NAME     HOSTS                RESOURCE VERSION   AGE
        orders   orders,orders.prod   7                  2d
        users    users                12                 2m
        """
    )


def test_get_all_namespaces_adds_a_namespace_column(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply(
        "GET",
        "/api/v1/resources",
        {
            "resources": [
                resource_json(
                    "mtls", {"mtls": {"mode": "STRICT"}}, kind="PeerAuthentication", namespace="prod"
                ),
                resource_json("mtls", {}, kind="PeerAuthentication", namespace="dev"),
            ]
        },
    )
    assert run_meshctl("get", "pa", "-A") == 0
    assert cp.requests[0].query == {"kind": "PeerAuthentication"}
    assert capsys.readouterr().out.splitlines() == [
        "NAMESPACE   NAME   MODE     RESOURCE VERSION   AGE",
        "dev         mtls   -        12                 2m",
        "prod        mtls   STRICT   12                 2m",
    ]


def test_get_rate_limit_policies_shows_each_rule_s_limit(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = [
        {"name": "creates", "limit": {"tokensPerInterval": 20, "interval": "1s"}, "scope": "GLOBAL"},
        {"limit": {"tokensPerInterval": 100, "interval": "1m"}, "key": "PRINCIPAL"},
    ]
    cp.reply(
        "GET",
        "/api/v1/resources",
        {"resources": [resource_json("limits", {"rules": rules}, kind="RateLimitPolicy")]},
    )
    assert run_meshctl("get", "rl") == 0
    assert capsys.readouterr().out.splitlines() == [
        "NAME     RULES                                 RESOURCE VERSION   AGE",
        "limits   creates=20/1s/global,1=100/1m/local   12                 2m",
    ]


def test_get_nothing_says_so_on_stderr(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    cp.reply("GET", "/api/v1/resources", {})  # protobuf JSON leaves an empty list out
    assert run_meshctl("get", "dr", "-n", "prod") == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "no DestinationRule resources in namespace prod\n"
    assert run_meshctl("get", "dr", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_get_one_as_yaml_is_the_document_form(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply(
        "GET",
        "/api/v1/resources/VirtualService/default/users",
        {"resource": resource_json("users", USERS_SPEC)},
    )
    assert run_meshctl("get", "virtualservices", "users", "-o", "yaml") == 0
    assert cp.requests[0].path == "/api/v1/resources/VirtualService/default/users"
    out = capsys.readouterr().out
    assert out.startswith("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n")
    assert yaml.safe_load(out) == {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "users", "namespace": "default", "resourceVersion": "12"},
        "spec": USERS_SPEC,
    }


def test_get_yaml_round_trips_through_apply(
    cp: FakeControlPlane, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = [
        resource_json("users", USERS_SPEC, version=12),
        resource_json("users", {"action": "DENY", "rules": [{}]}, kind="AuthorizationPolicy", version=9),
    ]
    cp.reply("GET", "/api/v1/resources", {"resources": stored})
    cp.reply("POST", "/api/v1/apply", {"results": [result_json(r, "unchanged") for r in stored]})
    assert run_meshctl("get", "vs", "-o", "yaml") == 0
    listed = capsys.readouterr().out
    assert listed.count("---\n") == 1

    monkeypatch.setattr("sys.stdin", io.StringIO(listed))
    assert run_meshctl("apply", "-f", "-") == 0
    sent = cp.requests_to("POST", "/api/v1/apply")[0].body["documents"]
    assert sent == list(yaml.safe_load_all(listed))
    assert [(d["kind"], d["metadata"]["resourceVersion"], d["spec"]) for d in sent] == [
        ("VirtualService", "12", USERS_SPEC),
        ("AuthorizationPolicy", "9", {"action": "DENY", "rules": [{}]}),
    ]
    assert sent[1]["apiVersion"] == "security.istio.io/v1"


def test_get_json_round_trips_through_apply(
    cp: FakeControlPlane, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply("GET", "/api/v1/resources", {"resources": [resource_json("users", USERS_SPEC)]})
    cp.reply(
        "GET",
        "/api/v1/resources/VirtualService/default/users",
        {"resource": resource_json("users", USERS_SPEC)},
    )
    cp.reply("POST", "/api/v1/apply", {"results": []})
    assert run_meshctl("get", "vs", "users", "-o", "json") == 0
    one = json.loads(capsys.readouterr().out)
    assert one["metadata"] == {"name": "users", "namespace": "default", "resourceVersion": "12"}
    assert run_meshctl("get", "vs", "-o", "json") == 0
    listed = capsys.readouterr().out
    assert json.loads(listed) == [one]

    monkeypatch.setattr("sys.stdin", io.StringIO(listed))
    assert run_meshctl("apply", "-f", "-") == 0
    assert cp.requests_to("POST", "/api/v1/apply")[0].body["documents"] == [one]


def test_get_a_missing_resource_fails_with_the_servers_message(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    path = "/api/v1/resources/DestinationRule/prod/nope"
    cp.error("GET", path, 404, "NOT_FOUND", "DestinationRule prod/nope not found")
    assert run_meshctl("get", "dr", "nope", "-n", "prod") == 1
    assert capsys.readouterr().err == "meshctl get: error: DestinationRule prod/nope not found\n"


def test_get_a_name_across_namespaces_is_a_usage_error(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_meshctl("get", "vs", "users", "-A") == 2
    assert "use -n, not -A" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_meshctl("get", "vs", "-A", "-n", "prod")
    assert cp.requests == []


def test_names_are_escaped_in_paths(cp: FakeControlPlane) -> None:
    cp.reply("GET", "/api/v1/resources/VirtualService/a%2Fb/x%20y", {"resource": resource_json("x y", {})})
    assert run_meshctl("get", "vs", "x y", "-n", "a/b") == 0
    assert cp.requests[0].path == "/api/v1/resources/VirtualService/a/b/x y"


# --- delete, history, rollback --------------------------------------------------------------


def test_delete(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    path = "/api/v1/resources/DestinationRule/prod/users"
    tombstone = resource_json("users", {}, kind="DestinationRule", namespace="prod", version=15)
    cp.reply("DELETE", path, {"result": result_json(tombstone, "deleted")})
    assert run_meshctl("delete", "destinationrule", "users", "-n", "prod") == 0
    assert cp.requests[0].query == {}
    assert cp.requests[0].body is None
    assert capsys.readouterr().out == "DestinationRule prod/users deleted (resourceVersion 15)\n"


def test_delete_dry_run_with_a_version_precondition(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    path = "/api/v1/resources/VirtualService/default/users"
    diff = "--- VirtualService default/users (resourceVersion 12)\n+++ /dev/null\n-hosts:\n-- users\n"
    cp.reply("DELETE", path, {"result": {"action": "deleted", "diff": diff}})  # no resource in the result
    assert run_meshctl("delete", "vs", "users", "--dry-run", "--resource-version", "12") == 0
    assert cp.requests[0].query == {"dryRun": "true", "resourceVersion": "12"}
    assert capsys.readouterr().out == "VirtualService default/users deleted (dry run)\n" + diff


def test_delete_conflict_fails(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    path = "/api/v1/resources/VirtualService/default/users"
    cp.error(
        "DELETE",
        path,
        409,
        "ABORTED",
        "VirtualService default/users: resourceVersion 3 is stale (current is 12)",
    )
    assert run_meshctl("delete", "vs", "users", "--resource-version", "3") == 1
    assert "is stale (current is 12)" in capsys.readouterr().err


def test_history_summarises_each_change(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}}], "timeout": "1s"}]}
    v2 = {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}}], "timeout": "2s"}]}
    v3 = {
        "hosts": ["users", "users.prod"],
        "http": [
            {"route": [{"destination": {"host": "users"}}], "timeout": "2s", "retries": {"attempts": 3}}
        ],
        "gateways": ["mesh"],
        "exportTo": ["."],
    }
    revisions = [
        {"resourceVersion": "5", "time": "2030-06-01T10:00:00Z", "spec": v1},
        {"resourceVersion": "8", "time": "2030-06-01T10:30:00.5Z", "spec": v2},
        {"resourceVersion": "9", "time": "2030-06-01T10:31:00Z", "spec": v3},
        {"resourceVersion": "11", "time": "2030-06-01T11:00:00Z", "spec": v1},
        {"resourceVersion": "13", "time": "2030-06-01T11:10:00Z", "deleted": True},
        {"resourceVersion": "14", "time": "2030-06-01T11:20:00Z", "spec": v2},
    ]
    cp.reply(
        "GET", "/api/v1/resources/VirtualService/default/users/revisions", {"revisions": revisions[::-1]}
    )
    assert run_meshctl("history", "vs", "users") == 0
    assert capsys.readouterr().out == textwrap.dedent(
        """\
        REVISION   TIME                   CHANGE
        5          2030-06-01 10:00:00Z   created
        8          2030-06-01 10:30:00Z   updated http[0].timeout
        9          2030-06-01 10:31:00Z   updated hosts, http[0].retries, gateways and 1 more
        11         2030-06-01 11:00:00Z   updated hosts, http[0].timeout, http[0].retries and 2 more (spec of revision 5)
        13         2030-06-01 11:10:00Z   deleted
        14         2030-06-01 11:20:00Z   created again (spec of revision 8)
        """  # noqa: E501
    )


def test_history_of_a_resource_that_never_existed(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.reply("GET", "/api/v1/resources/VirtualService/default/ghost/revisions", {})
    assert run_meshctl("history", "vs", "ghost") == 1
    assert "VirtualService default/ghost has no history" in capsys.readouterr().err


def test_rollback(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    path = "/api/v1/resources/VirtualService/default/users/rollback"
    cp.reply("POST", path, {"result": result_json(resource_json("users", USERS_SPEC, version=16), "updated")})
    assert run_meshctl("rollback", "vs", "users", "--to", "10") == 0
    assert cp.requests[0].body == {"toResourceVersion": 10, "dryRun": False}
    assert capsys.readouterr().out == (
        "VirtualService default/users updated (resourceVersion 16): rolled back to the spec of revision 10\n"
    )


def test_rollback_only_from_the_version_looked_at(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    path = "/api/v1/resources/VirtualService/default/users/rollback"
    cp.reply("POST", path, {"result": result_json(resource_json("users", USERS_SPEC, version=16), "updated")})
    assert run_meshctl("rollback", "vs", "users", "--to", "10", "--resource-version", "15") == 0
    assert cp.requests[0].body == {"toResourceVersion": 10, "resourceVersion": 15, "dryRun": False}
    cp.error("POST", path, 409, "ABORTED", "VirtualService default/users: resourceVersion 15 is stale")
    assert run_meshctl("rollback", "vs", "users", "--to", "10", "--resource-version", "15") == 1
    assert "resourceVersion 15 is stale" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run_meshctl("rollback", "vs", "users", "--to", "10", "--resource-version", "0")
    assert info.value.code == 2


def test_rollback_dry_run_prints_the_diff(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    path = "/api/v1/resources/PeerAuthentication/prod/mtls/rollback"
    diff = "-  mode: STRICT\n+  mode: PERMISSIVE"
    cp.reply("POST", path, {"result": {"action": "updated", "diff": diff}})
    assert run_meshctl("rollback", "pa", "mtls", "-n", "prod", "--to", "3", "--dry-run") == 0
    assert cp.requests[0].body == {"toResourceVersion": 3, "dryRun": True}
    assert capsys.readouterr().out == (
        f"PeerAuthentication prod/mtls updated (dry run): rolled back to the spec of revision 3\n{diff}\n"
    )


def test_rollback_needs_a_positive_revision(cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "x"):
        with pytest.raises(SystemExit) as info:
            run_meshctl("rollback", "vs", "users", "--to", bad)
        assert info.value.code == 2
    assert cp.requests == []


def test_rollback_to_an_unknown_revision_fails(
    cp: FakeControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    path = "/api/v1/resources/VirtualService/default/users/rollback"
    cp.error("POST", path, 404, "NOT_FOUND", "VirtualService default/users has no revision 99")
    assert run_meshctl("rollback", "vs", "users", "--to", "99") == 1
    assert (
        capsys.readouterr().err
        == "meshctl rollback: error: VirtualService default/users has no revision 99\n"
    )
