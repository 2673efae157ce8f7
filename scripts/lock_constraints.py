"""Write constraints.txt: the exact versions of every package the project installs, from this venv.

``make lock`` runs it after ``make test`` passed on a venv, so the file names the set the suite was
run with; ``make setup`` installs with ``-c constraints.txt``, so a fresh machine next month gets
that same set instead of whatever the open ``>=`` ranges of pyproject.toml resolve to then.

Only the project's dependency closure is written (its requirements with the ``dev`` and ``sim``
extras, followed through each installed package's own requirements, markers evaluated here), not
whatever else the venv holds, and never the project itself. Local version labels are dropped
(``torch==2.5.1+cpu`` -> ``torch==2.5.1``: the PyPI release, which ``==2.5.1`` also lets a local
CPU or CUDA build satisfy), so pip can resolve the file from PyPI alone.

    python scripts/lock_constraints.py [--extras dev sim] [--output constraints.txt]
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def closure(roots: list[Requirement], project: str) -> dict[str, str]:
    """Canonical name -> installed version of every distribution reachable from ``roots``."""
    found: dict[str, str] = {}
    pending = [(req, frozenset[str]()) for req in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req, _ = pending.pop()
        name = canonicalize_name(req.name)
        extras = frozenset(req.extras)
        if (name, extras) in seen or name == project:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError as err:
            raise SystemExit(
                f"{req.name} is required but not installed in {sys.prefix}; run make setup first"
            ) from err
        found[name] = dist.version
        for text in dist.requires or []:
            child = Requirement(text)
            environments = [{**default_environment(), "extra": extra} for extra in extras or {""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append((child, extras))
    return found


def project_requirements(extras: list[str]) -> tuple[str, list[Requirement]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = data["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    environment = default_environment()
    roots = [r for r in map(Requirement, texts) if r.marker is None or r.marker.evaluate(environment)]
    return canonicalize_name(project["name"]), roots


def public(version: str) -> str:
    return Version(version).public


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--extras", nargs="*", default=["dev", "sim"])
    parser.add_argument("--output", type=Path, default=REPO / "constraints.txt")
    args = parser.parse_args(argv)
    project, roots = project_requirements(args.extras)
    versions = closure(roots, project)
    lines = [
        "# The package versions the test suite was run with; `make setup` installs with -c constraints.txt.",
        "# Written by `make lock` (scripts/lock_constraints.py) from a venv that passed `make test`:",
        f"# Python {platform.python_version()} on {platform.system()} {platform.machine()}, extras "
        f"{', '.join(args.extras) or 'none'}. Refresh: make clean; make setup CONSTRAINTS=; make test; make lock",
        *(f"{name}=={public(version)}" for name, version in sorted(versions.items())),
    ]
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{args.output}: {len(versions)} packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
