"""The layering promises, checked on the source (AST) rather than trusted.

- `broker/`, `exporters/` and `devices/` never import `edge/`, not even inside a function;
- nothing the board runtime loads (every `devices/` module, the manifest reader, the CLI start-up,
  `parse-edge infer`) reaches torch through module-level imports, package `__init__`s included;
- no import cycle between modules of the four wings, lazy (function-level) imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WINGS = ("edge", "broker", "exporters", "devices")
LOWER_WINGS = ("broker", "exporters", "devices")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for wing in WINGS for p in (REPO / wing).rglob("*.py")}


def _imports(name: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of module `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        # `if TYPE_CHECKING:` blocks are never executed, so they are not module-level imports.
        found += [(t, id(node) in top_level) for t in targets]
    return found


def _resolve(target: str) -> str | None:
    """The project module an import names (the longest known prefix), or None for third party."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _packages_of(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


def _module_level_closure(roots: list[str]) -> dict[str, str]:
    """Every module loaded by importing `roots`, mapped to the module that imported it."""
    seen: dict[str, str] = {r: "<root>" for r in roots}
    todo = list(roots)
    while todo:
        current = todo.pop()
        for target, top in _imports(current):
            if not top:
                continue
            for dep in [*_packages_of(target), _resolve(target) or target]:
                if dep not in seen:
                    seen[dep] = current
                    if dep in MODULES:
                        todo.append(dep)
    return seen


@pytest.mark.parametrize("wing", LOWER_WINGS)
def test_lower_wings_never_import_edge(wing: str) -> None:
    offenders = [(name, target) for name in MODULES if name.split(".")[0] == wing
                 for target, _ in _imports(name) if target.split(".")[0] == "edge"]
    assert offenders == [], f"{wing}/ imports edge/ (DESIGN: layers are one-way): {offenders}"


def test_nothing_the_board_runtime_loads_reaches_torch() -> None:
    roots = [m for m in MODULES if m.split(".")[0] == "devices"]
    roots += ["exporters.manifest", "edge.cli", "edge.cli.infer"]
    roots += [m for m in MODULES if m.startswith("edge.cli.")]  # every CLI module loads at start-up
    loaded = _module_level_closure(roots)
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "onnxscript", "onnx"))
    chains = []
    for module in heavy:
        chain, step = [module], module
        while loaded.get(step, "<root>") != "<root>":
            step = loaded[step]
            chain.append(step)
        chains.append(" <- ".join(chain))
    assert heavy == [], "the board path loads torch/onnx:\n" + "\n".join(chains)


def test_no_import_cycles_lazy_imports_included() -> None:
    graph = {name: {dep for target, _ in _imports(name)
                    if (dep := _resolve(target)) is not None and dep != name
                    and not dep.startswith(name + ".")}
             for name in MODULES}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert cycles == [], f"import cycles (move the shared part down a layer): {cycles}"


def test_the_checks_see_what_they_claim_to() -> None:
    # The checks above are only worth something if the AST walk finds real edges.
    imports = dict(_imports("edge.learning.rounds"))
    assert imports.get("edge.learning.gossip.mixing_plan") is True
    lazy = {t for t, top in _imports("edge.cli.simulate") if not top}
    assert "edge.learning.simulate" in lazy
    assert "torch" in _module_level_closure(["edge.learning.model"])
