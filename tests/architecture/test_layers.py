"""The package's layer map, enforced: imports (lazy ones included) only go downward.

    cli -> workflows -> {engine, inference, search, store, evaluation, export, viz}
        -> {model, data, losses} -> {config, runtime, fileio, errors}

A module may import its own unit (``mdpr.store.reader`` -> ``mdpr.store.schema``) and any unit of a lower
layer, never a unit of its own layer (sideways) or of a higher one (upward), except the few sideways edges
the map names in ``SIDEWAYS`` (each with its reason). docs/architecture.md shows the same map.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Tuple

from layermap import LAYER_OF, SIDEWAYS

import mdpr

PACKAGE = Path(mdpr.__file__).parent




def _modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name: str, path: Path) -> Iterator[Tuple[int, str, List[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target, [a.name for a in node.names]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_unit_is_on_the_map() -> None:
    units = {_unit(name) for name, _ in _modules()} - {"", "__main__"}
    assert units <= set(LAYER_OF), f"add {sorted(units - set(LAYER_OF))} to the layer map (and docs/architecture.md)"


def test_imports_only_go_downward() -> None:
    problems = []
    for name, path in _modules():
        source = _unit(name)
        if source in ("", "__main__"):  # the package root is the public facade; __main__ runs the CLI
            continue
        for line, target, names in _imports(name, path):
            if target != "mdpr" and not target.startswith("mdpr."):
                continue
            if target == "mdpr":
                if set(names) <= {"__version__"}:
                    continue
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports the package root ({names})")
                continue
            dest = _unit(target)
            if dest == source:
                continue
            if dest not in LAYER_OF:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}, which is not on the map")
            elif LAYER_OF[dest] <= LAYER_OF[source] and (source, dest) not in SIDEWAYS:
                way = "sideways" if LAYER_OF[dest] == LAYER_OF[source] else "upward"
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({way}: {source} -> {dest})")
    assert not problems, "imports against the layer map:\n" + "\n".join(problems)


def test_cli_modules_do_not_import_torch_or_h5py_at_module_level() -> None:
    heavy = ("torch", "h5py", "numpy", "torchvision", "PIL")
    problems = []
    for name, path in _modules():
        if _unit(name) != "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only; imports inside functions are lazy
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            for target in targets:
                if target.split(".")[0] in heavy:
                    problems.append(f"{path.name}:{node.lineno} imports {target}")
                if target.startswith("mdpr.") and _unit(target) not in ("cli", "errors"):
                    problems.append(f"{path.name}:{node.lineno} imports {target} at module level (keep it lazy)")
    assert not problems, problems


def test_every_allowed_sideways_edge_is_used() -> None:
    used = set()
    for name, path in _modules():
        for _, target, _ in _imports(name, path):
            if target.startswith("mdpr."):
                used.add((_unit(name), _unit(target)))
    assert set(SIDEWAYS) <= used, f"drop unused exceptions from the map: {sorted(set(SIDEWAYS) - used)}"
