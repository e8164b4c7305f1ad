#!/usr/bin/env python3
"""Regenerate gen/ (Python messages, type stubs and gRPC stubs) from every .proto under protos/.

`python scripts/gen_protos.py` rewrites gen/ so that it holds exactly what protoc produces;
`--check` generates into a temporary directory instead and exits 1, showing a diff, when gen/
differs from it. Output depends only on the protos and the pinned grpcio-tools version.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
GEN_ROOT = ROOT / "gen"
WELL_KNOWN_INCLUDE = Path(grpc_tools.__file__).resolve().parent / "_proto"


def proto_files(proto_root: Path) -> list[str]:
    """Every .proto under proto_root, as sorted paths relative to it (protoc's import names)."""
    return sorted(path.relative_to(proto_root).as_posix() for path in proto_root.rglob("*.proto"))


def generate(proto_root: Path, out: Path) -> None:
    """Run protoc over every proto into out (which must exist), then add the package __init__.py files."""
    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"no .proto files under {proto_root}")
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={WELL_KNOWN_INCLUDE}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    subprocess.run(command, check=True)
    add_package_markers(out)


def add_package_markers(out: Path) -> None:
    """Make every directory holding generated modules, and each parent below out, a regular package."""
    for module in list(out.rglob("*.py")):
        directory = module.parent
        while directory != out:
            (directory / "__init__.py").touch()
            directory = directory.parent


def tree(root: Path) -> set[str]:
    """Relative paths of the files under root, ignoring Python's bytecode caches."""
    if not root.is_dir():
        return set()
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def differences(expected: Path, actual: Path) -> list[str]:
    """A unified diff (as lines) that turns actual into expected; empty when they match."""
    lines: list[str] = []
    want, have = tree(expected), tree(actual)
    for name in sorted(want | have):
        new = expected / name
        old = actual / name
        if name in want and name in have and filecmp.cmp(new, old, shallow=False):
            continue
        if name not in have:
            lines.append(f"missing: gen/{name}\n")
        elif name not in want:
            lines.append(f"not generated (would be deleted): gen/{name}\n")
        before = old.read_text().splitlines(keepends=True) if name in have else []
        after = new.read_text().splitlines(keepends=True) if name in want else []
        lines.extend(
            difflib.unified_diff(
                before,
                after,
                fromfile=f"a/gen/{name}" if name in have else "/dev/null",
                tofile=f"b/gen/{name}" if name in want else "/dev/null",
            )
        )
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
    return lines


def sync(source: Path, target: Path) -> None:
    """Make target's files identical to source's: copy new or changed files, delete the rest."""
    wanted, present = tree(source), tree(target)
    for name in sorted(wanted):
        destination = target / name
        if name in present and filecmp.cmp(source / name, destination, shallow=False):
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, destination)
    for name in sorted(present - wanted):
        (target / name).unlink()
    for directory in sorted((d for d in target.rglob("*") if d.is_dir()), reverse=True):
        if directory.name == "__pycache__":
            shutil.rmtree(directory)
        elif not any(directory.iterdir()):
            directory.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail with a diff if gen/ is stale")
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT, help="proto root (default: protos/)")
    parser.add_argument("--out", type=Path, default=GEN_ROOT, help="output directory (default: gen/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gen-protos-") as scratch:
        fresh = Path(scratch)
        generate(args.protos, fresh)
        if args.check:
            diff = differences(fresh, args.out)
            if diff:
                sys.stdout.writelines(diff)
                print(f"\n{args.out} is stale: run `make protos` and commit the result.", file=sys.stderr)
                return 1
            print(f"{args.out} is up to date with {args.protos}.")
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        sync(fresh, args.out)
    print(f"generated {len(tree(args.out))} files in {args.out} from {len(proto_files(args.protos))} protos.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
