"""``python -m devtools.imports``: the import graph between railgate's packages, and its rules.

Read from the source (``ast``), not by importing anything: every ``import`` and ``from ... import``
statement, relative ones resolved, those inside a function marked lazy (they run only when it is
called, but they are dependencies all the same). A dispatch by string (``importlib.import_module``,
as ``gateway/cli.py``'s ``_dev_tool`` does) is no static import and is not counted.

The rules (the arrows of DESIGN.md's layout):

- the product (railcore, gateway, edge) never imports dev tooling (hub, models, devtools, bench,
  loadtests) or the tests;
- railcore, the shared core, imports neither gateway nor edge;
- edge never imports gateway.

Prints the graph, then each broken rule with file and line; exits 1 if any rule is broken.

    python -m devtools.imports [--root DIR]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRODUCT = ("railcore", "gateway", "edge")
DEV_TOOLING = ("hub", "models", "devtools", "bench", "loadtests")
PACKAGES = (*PRODUCT, *DEV_TOOLING, "tests")
SKIPPED = ("models/repository",)  # built artefacts: the hub's copies of python_model.py, not source


@dataclass(frozen=True, slots=True)
class Import:
    """One static import: where it is, what it names, and whether it runs only inside a function."""

    path: str  # relative to the root, e.g. "gateway/cli.py"
    line: int
    source: str  # the importing module, e.g. "gateway.cli"
    target: str  # the imported module, e.g. "models.build"
    lazy: bool

    @property
    def source_package(self) -> str:
        return self.source.split(".")[0]

    @property
    def target_package(self) -> str:
        return self.target.split(".")[0]


@dataclass(frozen=True, slots=True)
class Rule:
    """Modules of ``sources`` may not import modules of ``forbidden``; ``why`` says what it protects."""

    sources: tuple[str, ...]
    forbidden: tuple[str, ...]
    why: str

    def broken_by(self, imp: Import) -> bool:
        return imp.source_package in self.sources and imp.target_package in self.forbidden


RULES = (
    Rule(PRODUCT, (*DEV_TOOLING, "tests"), "the product never imports dev tooling"),
    Rule(("railcore",), ("gateway", "edge"), "the shared core imports neither gateway nor edge"),
    Rule(("edge",), ("gateway",), "the edge runtime never imports the gateway"),
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names (``from . import x`` in a/b.py -> ``a``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


class _Collector(ast.NodeVisitor):
    def __init__(self, path: str, module: str, is_package: bool) -> None:
        self.path, self.module, self.is_package = path, module, is_package
        self.depth = 0  # functions we are inside of
        self.found: list[Import] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Import(self.path, node.lineno, self.module, alias.name, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        # ``from pkg import name`` names a submodule or an attribute: either way ``pkg`` is depended on.
        target = _resolve(node, self.module, self.is_package)
        self.found.append(Import(self.path, node.lineno, self.module, target, self.depth > 0))


def imports_in(root: Path, packages: Iterable[str] = PACKAGES) -> list[Import]:
    """Every static import in the ``.py`` files of ``packages`` under ``root``."""
    found: list[Import] = []
    for package in packages:
        folder = root / package
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if any(rel.startswith(f"{skip}/") for skip in SKIPPED):
                continue
            collector = _Collector(rel, module_name(path, root), path.name == "__init__.py")
            collector.visit(ast.parse(path.read_bytes(), filename=rel))
            found += collector.found
    return found


def between_packages(imports: Iterable[Import], packages: Iterable[str] = PACKAGES) -> Iterator[Import]:
    """The imports that cross from one of ``packages`` to another (third-party and stdlib left out)."""
    known = set(packages)
    for imp in imports:
        if imp.target_package in known and imp.target_package != imp.source_package:
            yield imp


def violations(imports: Iterable[Import], rules: Iterable[Rule] = RULES) -> list[str]:
    """One line per import that breaks a rule: file, line, what it imports and which rule it breaks."""
    rules = tuple(rules)
    broken = []
    for imp in imports:
        for rule in rules:
            if rule.broken_by(imp):
                lazy = " (lazily, in a function)" if imp.lazy else ""
                broken.append(f"{imp.path}:{imp.line} imports {imp.target}{lazy}: {rule.why}")
    return broken


def render(imports: Iterable[Import], packages: Iterable[str] = PACKAGES) -> str:
    """The graph, one line per package: each package it imports, with how many modules import it."""
    packages = tuple(packages)
    edges: dict[str, dict[str, dict[str, set[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(set)))
    for imp in between_packages(imports, packages):
        edges[imp.source_package][imp.target_package]["lazy" if imp.lazy else "top"].add(imp.source)
    width = max(len(p) for p in packages)
    lines = ["package imports (n = modules importing it; lazy = only inside functions)"]
    for package in packages:
        targets = []
        for target in packages:
            kinds = edges[package].get(target)
            if not kinds:
                continue
            top, lazy = kinds["top"], kinds["lazy"] - kinds["top"]
            counts = [str(len(top))] if top else []
            counts += [f"{len(lazy)} lazy"] if lazy else []
            targets.append(f"{target} ({', '.join(counts)})")
        lines.append(f"  {package:<{width}} -> {', '.join(targets) or '-'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.imports", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to read [this one]")
    args = parser.parse_args(argv)
    imports = imports_in(args.root)
    broken = violations(imports)
    report = [render(imports), "", "rules: " + "; ".join(rule.why for rule in RULES)]
    report += [f"  BROKEN {line}" for line in broken]
    report.append(f"  {len(broken)} broken" if broken else "  all kept")
    sys.stdout.write("\n".join(report) + "\n")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
