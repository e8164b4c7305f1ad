"""``meshctl apply | get | delete | history | rollback``: manage policy resources through the
control plane's REST API.

Exit codes: 0 done, 1 the operation failed (refused by the control plane, not reachable, a
sidecar rejected the change, or the wait timed out), 2 bad arguments or input files.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from control_plane.policy.fields import parse_duration as parse_policy_duration
from meshctl.api_client import (
    ApiError,
    ApplyResult,
    ConnectionArgumentsError,
    ControlPlaneClient,
    Resource,
    Revision,
    add_connection_arguments,
    client_from_args,
)
from meshctl.cmd_certs import positive_int
from meshctl.cmd_status import (
    Clock,
    Sleep,
    WallClock,
    describe_lagging,
    fail,
    wait_for_revision,
)
from meshctl.documents import (
    InputError,
    changed_paths,
    dump_yaml,
    load_documents,
    resolve_kind,
    to_document,
)
from meshctl.tables import format_age, format_duration, format_table, format_time

DEFAULT_NAMESPACE = "default"
DEFAULT_WAIT_TIMEOUT = "30s"
MAX_PATHS_SHOWN = 3

Body = Callable[[argparse.Namespace, ControlPlaneClient], int]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def parse_duration(text: str) -> float:
    """``--timeout``: a duration as policy documents write one (30s, 1m30s, 500ms, 2h) → seconds > 0."""
    try:
        seconds = parse_policy_duration(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return seconds


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    now: WallClock = _utc_now,
) -> None:
    """Add ``apply``, ``get``, ``delete``, ``history`` and ``rollback``; each sets ``run`` to a
    ``callable(args) -> int``. `clock` and `sleep` drive ``apply --wait``; `now` the ages shown."""
    apply = subparsers.add_parser(
        "apply",
        help="create or update policy resources from YAML",
        description="Validate and store every document of every file, all or none. "
        "With --dry-run, show what would change (as a diff) and store nothing.",
    )
    apply.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file ('-' for standard input, a directory for its *.yaml/*.yml/*.json); repeatable",
    )
    apply.add_argument("--dry-run", action="store_true", help="validate and diff, store nothing")
    apply.add_argument(
        "--wait",
        action="store_true",
        help="then wait until every connected sidecar has applied the change",
    )
    apply.add_argument(
        "--timeout",
        type=parse_duration,
        default=parse_duration(DEFAULT_WAIT_TIMEOUT),
        metavar="DURATION",
        help=f"how long --wait waits, e.g. 30s, 2m (default: {DEFAULT_WAIT_TIMEOUT})",
    )
    add_connection_arguments(apply)
    apply.set_defaults(run=_command("apply", functools.partial(_apply, clock=clock, sleep=sleep)))

    get = subparsers.add_parser(
        "get",
        help="list or show policy resources",
        description="List the resources of one kind, or show one. Kinds: virtualservice (vs), "
        "destinationrule (dr), peerauthentication (pa), authorizationpolicy (ap), "
        "requestauthentication (ra), ratelimitpolicy (rl); plural forms work too.",
    )
    get.add_argument("kind", metavar="KIND", help="resource kind, e.g. vs or VirtualService")
    get.add_argument("name", metavar="NAME", nargs="?", help="one resource (default: all of the kind)")
    _add_namespace(get, all_namespaces=True)
    get.add_argument(
        "-o",
        "--output",
        choices=("table", "yaml", "json"),
        default="table",
        help="output format; yaml and json print documents `meshctl apply` takes back (default: table)",
    )
    add_connection_arguments(get)
    get.set_defaults(run=_command("get", functools.partial(_get, now=now)))

    delete = subparsers.add_parser(
        "delete", help="delete a policy resource", description="Delete one resource (its history stays)."
    )
    _add_key_arguments(delete)
    delete.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    delete.add_argument(
        "--resource-version",
        type=positive_int,
        default=0,
        metavar="N",
        help="delete only if the resource is still at this version",
    )
    add_connection_arguments(delete)
    delete.set_defaults(run=_command("delete", _delete))

    history = subparsers.add_parser(
        "history",
        help="list a resource's revisions",
        description="Every revision of one resource, oldest first, with what changed.",
    )
    _add_key_arguments(history)
    add_connection_arguments(history)
    history.set_defaults(run=_command("history", _history))

    rollback = subparsers.add_parser(
        "rollback",
        help="make an earlier revision's spec current again",
        description="Store the spec of an earlier revision again, as a new revision.",
    )
    _add_key_arguments(rollback)
    rollback.add_argument(
        "--to", dest="to", type=positive_int, required=True, metavar="N", help="the revision to restore"
    )
    rollback.add_argument("--dry-run", action="store_true", help="show the diff, store nothing")
    rollback.add_argument(
        "--resource-version",
        type=positive_int,
        default=0,
        metavar="N",
        help="roll back only if the resource is still at this version (not changed since you looked)",
    )
    add_connection_arguments(rollback)
    rollback.set_defaults(run=_command("rollback", _rollback))


def _add_namespace(parser: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    group = parser.add_mutually_exclusive_group() if all_namespaces else parser
    group.add_argument("-n", "--namespace", default=None, help=f"namespace (default: {DEFAULT_NAMESPACE})")
    if all_namespaces:
        group.add_argument(
            "-A", "--all-namespaces", action="store_true", help="list resources of every namespace"
        )


def _add_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", metavar="KIND", help="resource kind, e.g. vs or VirtualService")
    parser.add_argument("name", metavar="NAME", help="resource name")
    _add_namespace(parser)


def _command(name: str, body: Body) -> Callable[[argparse.Namespace], int]:
    """Wrap a command body: build the client, map errors to messages and exit codes."""

    def run(args: argparse.Namespace) -> int:
        try:
            client = client_from_args(args)
            return body(args, client)
        except (ConnectionArgumentsError, InputError) as exc:
            return fail(name, exc, 2)
        except ApiError as exc:
            return fail(name, exc)
        except KeyboardInterrupt:
            print(f"meshctl {name}: interrupted", file=sys.stderr)
            return 130

    return run


# --- apply -----------------------------------------------------------------------------------


def _result_line(
    result: ApplyResult, *, dry_run: bool, kind: str = "", namespace: str = "", name: str = ""
) -> str:
    """`VirtualService default/users created (resourceVersion 12)`; the key fills in what the
    server's result leaves out."""
    resource = result.resource
    label = f"{resource.kind or kind} {resource.namespace or namespace}/{resource.name or name}"
    if dry_run:
        suffix = " (dry run)"
    elif resource.resource_version:
        suffix = f" (resourceVersion {resource.resource_version})"
    else:
        suffix = ""
    return f"{label} {result.action or 'done'}{suffix}"


def _print_result(result: ApplyResult, *, dry_run: bool, **key: str) -> None:
    print(_result_line(result, dry_run=dry_run, **key))
    if dry_run and result.diff:
        print(result.diff, end="" if result.diff.endswith("\n") else "\n")


def _apply(args: argparse.Namespace, client: ControlPlaneClient, *, clock: Clock, sleep: Sleep) -> int:
    if args.wait and args.dry_run:
        raise InputError("--wait has nothing to wait for with --dry-run")
    documents = load_documents(args.files)
    results = client.apply([d.document for d in documents], dry_run=args.dry_run)
    for result in results:
        _print_result(result, dry_run=args.dry_run)
    if not args.wait or not results:
        return 0
    revision = max(r.resource.resource_version for r in results)
    print(
        f"waiting up to {format_duration(args.timeout)} for every connected sidecar "
        f"to apply revision {revision}",
        file=sys.stderr,
    )
    try:
        outcome = wait_for_revision(client, revision, timeout=args.timeout, clock=clock, sleep=sleep)
    except ApiError as exc:  # e.g. a token that may apply but not list sidecars
        fail("apply", exc)
        print(
            f"  the change is stored (revision {revision}); the wait could not check the sidecars",
            file=sys.stderr,
        )
        return 1
    if outcome.rejected:
        for sidecar in outcome.rejected:
            reason = sidecar.nack_reason or "(no reason given)"
            fail("apply", f"sidecar {sidecar} rejected the config: {reason}")
        print(
            f"  the change is stored; {len(outcome.rejected)} of {outcome.sidecars} sidecars keep "
            "serving their last good config",
            file=sys.stderr,
        )
        return 1
    if not outcome.done:
        detail = (
            f"{len(outcome.lagging)} of {outcome.sidecars} sidecars have not applied revision {revision}"
            if outcome.lagging
            else outcome.last_error
        )
        fail("apply", f"timed out after {format_duration(args.timeout)}: {detail}")
        for sidecar in outcome.lagging:
            print(f"  {describe_lagging(sidecar)}", file=sys.stderr)
        return 1
    if outcome.sidecars:
        plural = "" if outcome.sidecars == 1 else "s"
        print(f"{outcome.sidecars} sidecar{plural} applied revision {revision} ({outcome.elapsed:.1f}s)")
    else:
        print(f"no sidecars connected; revision {revision} is stored")
    return 0


# --- get -------------------------------------------------------------------------------------


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _detail_column(kind: str) -> tuple[str, Callable[[dict[str, Any]], str]] | None:
    """A kind's most telling spec field, as a table column."""

    def field(*path: str) -> Callable[[dict[str, Any]], str]:
        def get(spec: dict[str, Any]) -> str:
            value: Any = spec
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            return ",".join(_strings(value)) if isinstance(value, list) else str(value or "-")

        return get

    def issuers(spec: dict[str, Any]) -> str:
        rules = spec.get("jwtRules")
        if not isinstance(rules, list):
            return "-"
        found = [str(r.get("issuer")) for r in rules if isinstance(r, dict)]
        return ",".join(found) or "-"

    def rate_limits(spec: dict[str, Any]) -> str:
        rules = spec.get("rules")
        if not isinstance(rules, list):
            return "-"
        shown = []
        for index, rule in enumerate(r for r in rules if isinstance(r, dict)):
            limit = rule.get("limit")
            limit = limit if isinstance(limit, dict) else {}
            shown.append(
                f"{rule.get('name', index)}={limit.get('tokensPerInterval')}/{limit.get('interval')}"
                f"/{str(rule.get('scope', 'LOCAL')).lower()}"
            )
        return ",".join(shown) or "-"

    columns: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
        "VirtualService": ("HOSTS", field("hosts")),
        "DestinationRule": ("HOST", field("host")),
        "PeerAuthentication": ("MODE", field("mtls", "mode")),
        "AuthorizationPolicy": ("ACTION", lambda spec: str(spec.get("action") or "ALLOW")),
        "RequestAuthentication": ("ISSUERS", issuers),
        "RateLimitPolicy": ("RULES", rate_limits),
    }
    return columns.get(kind)


def _get(args: argparse.Namespace, client: ControlPlaneClient, *, now: WallClock) -> int:
    kind = resolve_kind(args.kind)
    if args.name and args.all_namespaces:
        raise InputError("a NAME needs one namespace: use -n, not -A")
    namespace = "" if args.all_namespaces else args.namespace or DEFAULT_NAMESPACE
    if args.name:
        resources = [client.get_resource(kind, namespace, args.name)]
    else:
        resources = client.list_resources(kind, namespace)
    documents = [to_document(r) for r in resources]
    if args.output == "yaml":
        print(dump_yaml(documents), end="")
    elif args.output == "json":
        print(json.dumps(documents[0] if args.name else documents, indent=2))
    elif not resources:
        where = "any namespace" if args.all_namespaces else f"namespace {namespace}"
        print(f"no {kind} resources in {where}", file=sys.stderr)
    else:
        print(_resource_table(kind, resources, now(), all_namespaces=args.all_namespaces))
    return 0


def _resource_table(kind: str, resources: list[Resource], now: datetime, *, all_namespaces: bool) -> str:
    detail = _detail_column(kind)
    headers = [
        *(["NAMESPACE"] if all_namespaces else []),
        "NAME",
        *([detail[0]] if detail else []),
        "RESOURCE VERSION",
        "AGE",
    ]
    rows = [
        [
            *([r.namespace] if all_namespaces else []),
            r.name,
            *([detail[1](r.spec)] if detail else []),
            str(r.resource_version),
            format_age(r.update_time, now),
        ]
        for r in sorted(resources, key=lambda r: (r.namespace, r.name))
    ]
    return format_table(headers, rows)


# --- delete, history, rollback --------------------------------------------------------------


def _key(args: argparse.Namespace) -> tuple[str, str, str]:
    return resolve_kind(args.kind), args.namespace or DEFAULT_NAMESPACE, args.name


def _delete(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    kind, namespace, name = _key(args)
    result = client.delete_resource(
        kind, namespace, name, resource_version=args.resource_version, dry_run=args.dry_run
    )
    _print_result(result, dry_run=args.dry_run, kind=kind, namespace=namespace, name=name)
    return 0


def _history(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    kind, namespace, name = _key(args)
    revisions = sorted(client.revisions(kind, namespace, name), key=lambda r: r.resource_version)
    if not revisions:
        print(f"meshctl history: {kind} {namespace}/{name} has no history", file=sys.stderr)
        return 1
    rows = [
        [str(rev.resource_version), format_time(rev.time), change]
        for rev, change in zip(revisions, describe_changes(revisions), strict=True)
    ]
    print(format_table(("REVISION", "TIME", "CHANGE"), rows))
    return 0


def describe_changes(revisions: list[Revision]) -> list[str]:
    """One summary per revision (oldest first): created, deleted, or which spec paths changed."""
    summaries: list[str] = []
    previous: Revision | None = None
    for index, rev in enumerate(revisions):
        if rev.deleted or rev.spec is None:
            summary = "deleted"
        elif previous is None:
            summary = "created"
        elif previous.deleted or previous.spec is None:
            summary = "created again"
        else:
            paths = changed_paths(previous.spec, rev.spec)
            shown = ", ".join(paths[:MAX_PATHS_SHOWN])
            more = f" and {len(paths) - MAX_PATHS_SHOWN} more" if len(paths) > MAX_PATHS_SHOWN else ""
            summary = f"updated {shown}{more}" if paths else "updated (same spec)"
        if rev.spec is not None and summary != "created":
            same = [r.resource_version for r in revisions[: max(index - 1, 0)] if r.spec == rev.spec]
            if same:
                summary += f" (spec of revision {same[-1]})"
        summaries.append(summary)
        previous = rev
    return summaries


def _rollback(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    kind, namespace, name = _key(args)
    result = client.rollback(
        kind, namespace, name, args.to, resource_version=args.resource_version, dry_run=args.dry_run
    )
    line = _result_line(result, dry_run=args.dry_run, kind=kind, namespace=namespace, name=name)
    print(f"{line}: rolled back to the spec of revision {args.to}")
    if args.dry_run and result.diff:
        print(result.diff, end="" if result.diff.endswith("\n") else "\n")
    return 0
