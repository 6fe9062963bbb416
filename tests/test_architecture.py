"""The drawn layers are what the code does: imports point down, no cycles, Hydra only in jobs.

L0 ``runtime`` and ``data`` (I/O, validation, device, errors); L1 the algorithm packages; L2 the
jobs and the CLI. ``gpuseg.evaluation`` (scoring against the synthetic generator's planted
personas) is for benchmarks and tests: nothing in the package imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpuseg"
LAYER = {"runtime": 0, "data": 0, "features": 1, "text": 1, "journey": 1, "fusion": 1, "cluster": 1,
         "lookalike": 1, "profile": 1, "value": 1, "report": 1, "audience": 1, "dynamics": 1, "export": 1,
         "evaluation": 1.5, "jobs": 2, "cli": 2, "__main__": 2}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module -> the gpuseg modules and third-party top-level names it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = found
    return graph


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "gpuseg" else None


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert sorted(packages - set(LAYER) - {"conf"}) == []  # conf holds YAML only


def test_imports_point_down_only():
    wrong = []
    for module, imported in _imports().items():
        here = _package(module)
        if here is None or here not in LAYER:
            continue
        for target in imported:
            there = _package(target)
            if there in LAYER and there != here and LAYER[there] > LAYER[here]:
                wrong.append(f"{module} (L{LAYER[here]}) imports {target} (L{LAYER[there]})")
    assert wrong == []


def test_no_import_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for module, imported in _imports().items():
        here = _package(module)
        if here is None:
            continue
        edges.setdefault(here, set()).update(
            p for p in (_package(t) for t in imported) if p is not None and p != here and p in LAYER)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    return path + [nxt]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in (cycle_from(p) for p in edges) if c]
    assert cycles == []


def test_only_jobs_and_the_cli_see_hydra():
    seen = [m for m, imported in _imports().items()
            if any(t.split(".")[0] in ("hydra", "omegaconf") for t in imported)
            and _package(m) not in ("jobs", "cli", "conf")]
    assert seen == []


def test_nothing_in_the_package_imports_the_synthetic_evaluation():
    users = [m for m, imported in _imports().items()
             if m != "gpuseg.evaluation" and any(t.startswith("gpuseg.evaluation") for t in imported)]
    assert users == []
