"""Regenerate tests/infra/schemas/ from a checkout (or bare mirror) of github.com/Azure/bicep-types-az.

    python tests/infra/schemas/vendor.py GIT_DIR [--commit SHA]

For every ``'Type@apiVersion'`` a file under bicep/ names (declared or ``existing``), it finds the
generated ``types.json`` that defines that resource type, keeps the resource type and every type
reachable from its body (nothing else: no other resource types, no resource functions, no
descriptions), renumbers the references, and writes ``<namespace>/<apiVersion>/types.json`` plus
``index.json`` (resource name -> ``file#/index``, and the source commit and paths). Offline, only
``git`` is needed. The output is what tests/infra/schema_check.py reads; rerun this script after
changing an API version in bicep/ (the tests say which pair is missing).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
REPOSITORY = "https://github.com/Azure/bicep-types-az"
RESOURCE = re.compile(r"^\s*resource\s+\w+\s+'([^'@]+)@([^']+)'", re.MULTILINE)


def used_resource_types(root: Path = ROOT) -> set[str]:
    """Every ``Type@apiVersion`` a Bicep file under bicep/ declares or references as existing."""
    return {
        f"{found.group(1)}@{found.group(2)}"
        for path in sorted((root / "bicep").rglob("*.bicep"))
        for found in RESOURCE.finditer(path.read_text())
    }


def _git(git_dir: Path, *args: str) -> str:
    done = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True, check=True)
    return done.stdout


def _references(node: Any) -> list[int]:
    """Indices of the ``{"$ref": "#/N"}`` found anywhere in a type entry, keys taken in sorted order."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return [int(str(node["$ref"]).removeprefix("#/"))]
        return [index for key in sorted(node) for index in _references(node[key])]
    if isinstance(node, list):
        return [index for value in node for index in _references(value)]
    return []


def _renumber(node: Any, mapping: dict[int, int]) -> Any:
    """References renumbered; the descriptions of types and of properties dropped (never a property *named* so)."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return {"$ref": f"#/{mapping[int(str(node['$ref']).removeprefix('#/'))]}"}
        described = "$type" in node or ("type" in node and "flags" in node)
        return {
            key: _renumber(value, mapping) for key, value in node.items() if not (described and key == "description")
        }
    if isinstance(node, list):
        return [_renumber(value, mapping) for value in node]
    return node


def trim(types: list[dict[str, Any]], names: set[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The resource types named (case-insensitively) and the types their bodies reach, renumbered."""
    wanted = {name.lower() for name in names}
    roots = [i for i, entry in enumerate(types) if entry["$type"] == "ResourceType" and entry["name"].lower() in wanted]
    # Breadth first from the resource types, references in sorted-key order: the numbering depends on the
    # types alone, so trimming a trimmed file gives the same file (tests/infra/test_schemas.py checks it).
    keep = list(roots)
    seen = set(roots)
    for index in keep:  # grows while it is walked
        entry = types[index]
        for found in _references(entry["body"] if entry["$type"] == "ResourceType" else entry):
            if found not in seen:
                seen.add(found)
                keep.append(found)
    mapping = {old: new for new, old in enumerate(keep)}
    trimmed = []
    for old in keep:
        entry = types[old]
        if entry["$type"] == "ResourceType":
            entry = {
                key: entry[key] for key in ("$type", "name", "body", "readableScopes", "writableScopes") if key in entry
            }
        trimmed.append(_renumber(entry, mapping))
    return trimmed, {types[i]["name"]: mapping[i] for i in roots}


def dump(types: list[dict[str, Any]]) -> str:
    """One type per line: small diffs when a type changes."""
    return "[\n" + ",\n".join(json.dumps(entry, sort_keys=True, separators=(",", ":")) for entry in types) + "\n]\n"


def vendor(git_dir: Path, commit: str, out: Path = HERE) -> dict[str, Any]:
    """Write the trimmed schemas and index.json for every pair bicep/ uses; returns the index."""
    used = used_resource_types()
    by_folder: dict[str, set[str]] = defaultdict(set)
    for name in used:
        resource_type, api_version = name.split("@")
        by_folder[f"{resource_type.split('/')[0].lower()}/{api_version}"].add(name)
    listing = _git(git_dir, "ls-tree", "-r", "--name-only", commit, "generated").splitlines()
    index: dict[str, Any] = {"source": {"repository": REPOSITORY, "commit": commit, "paths": {}}, "resources": {}}
    missing = set(used)
    for folder, names in sorted(by_folder.items()):
        candidates = [path for path in listing if path.endswith(f"/{folder}/types.json")]
        found: dict[str, int] = {}
        kept: list[dict[str, Any]] = []
        for path in candidates:
            types = json.loads(_git(git_dir, "show", f"{commit}:{path}"))
            here = {entry["name"].lower() for entry in types if entry["$type"] == "ResourceType"}
            matched = {name for name in names if name.lower() in here}
            if not matched:
                continue
            if kept:
                raise SystemExit(f"{folder}: resource types split over several types.json files; extend vendor.py")
            kept, roots = trim(types, matched)
            found = {name: roots[next(key for key in roots if key.lower() == name.lower())] for name in matched}
            index["source"]["paths"][folder] = path
        target = out / folder / "types.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dump(kept))
        for name, position in found.items():
            index["resources"][name] = {"$ref": f"{folder}/types.json#/{position}"}
            missing.discard(name)
    if missing:
        raise SystemExit(f"not found in bicep-types-az {commit}: {sorted(missing)}")
    index["resources"] = dict(sorted(index["resources"].items()))
    (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index


def main(argv: list[str]) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("git_dir", type=Path, help="a bicep-types-az clone's .git directory, or a bare mirror")
    parser.add_argument("--commit", default="HEAD", help="commit to read (default HEAD)")
    args = parser.parse_args(argv)
    commit = _git(args.git_dir, "rev-parse", args.commit).strip()
    index = vendor(args.git_dir, commit)
    sys.stdout.write(f"{len(index['resources'])} resource types from bicep-types-az {commit}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
