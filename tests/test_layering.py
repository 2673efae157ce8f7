"""Which package may import which: every ``distill`` import in src/distill follows the layer table.

The table is the one in docs/architecture.md. A package always may import itself; the lowest layer
is the modules directly in ``distill/`` (geometry, io, images, features, stats, distributed,
synthetic) and the config package. ``evaluate``, ``encode`` and ``worldmodel`` are packages to come;
their rows fix now what they will be allowed to use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "distill"

LOWEST = "lowest"
ALLOWED: dict[str, set[str]] = {
    LOWEST: set(),
    "teachers": {LOWEST},
    "data": {LOWEST, "teachers"},
    "preprocess": {LOWEST, "teachers", "data"},
    "models": {LOWEST, "teachers"},
    "losses": {LOWEST, "teachers", "models"},
    "train": {LOWEST, "teachers", "data", "models", "losses"},
    "decode": {LOWEST, "teachers", "data", "models"},
    "demo": {LOWEST, "teachers", "data", "preprocess", "models", "losses", "decode"},
    "evaluate": {LOWEST, "teachers", "data", "models", "decode"},
    "encode": {LOWEST, "teachers", "data", "models", "decode"},
    "worldmodel": {LOWEST, "teachers", "data", "models", "decode", "encode"},
    "simulate": {LOWEST, "decode"},
}
LOWEST_PACKAGES = {"configs"}  # packages without code that count as the lowest layer


def layer_of(module: str) -> str:
    """``distill.data.loader`` -> ``data``; ``distill.stats`` -> the lowest layer."""
    parts = module.split(".")
    assert parts[0] == "distill", module
    if len(parts) == 1 or parts[1] in LOWEST_PACKAGES or (PACKAGE / f"{parts[1]}.py").is_file():
        return LOWEST
    return parts[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def distill_imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported module) of every import of a distill module, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # ``from distill import stats`` imports the module distill.stats
            found += [
                (node.lineno, f"{target}.{alias.name}" if target == "distill" else target)
                for alias in node.names
            ]
    return [(line, name) for line, name in found if name == "distill" or name.startswith("distill.")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    out = []
    for line, imported in distill_imports(source, module, is_package):
        theirs = layer_of(imported)
        if theirs != own and theirs not in ALLOWED[own]:
            out.append(f"{module}:{line} ({own}) imports {imported} ({theirs})")
    return out


def test_every_package_has_a_row() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages - LOWEST_PACKAGES <= set(ALLOWED), (
        "add the new package to ALLOWED and docs/architecture.md"
    )


def test_imports_follow_the_layer_table() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert not found, "imports against the layer table:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("distill.models.student", "from distill.data.manifest import Manifest"),
        ("distill.stats", "from distill.teachers.base import Teacher"),
        ("distill.losses.cosine", "import distill.train.trainer"),
        ("distill.teachers.sam", "from distill import data"),
        ("distill.data.loader", "from ..preprocess import extract"),
        ("distill.evaluate.probe", "from distill.train import config"),
    ],
)
def test_the_checker_sees_a_forbidden_import(module: str, source: str) -> None:
    assert violations(source, module)


def test_the_checker_allows_the_table() -> None:
    assert not violations(
        "from distill.features import TeacherSpec\nfrom . import heads", "distill.models.student"
    )
    assert not violations(
        "from distill.models import Student\nimport distill.decode.pca", "distill.evaluate.probe"
    )
