"""The pack's import graph, read from the source (no ComfyUI needed): no cycle; the core
(unhype/) never imports the ComfyUI side (nodes/); the machinery (nodes/sampling/,
nodes/training/ and the shared modules) never imports a node file, so nothing imports back up."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("unhype", "nodes")
#: the files of the nodes themselves: what a reader opens to find a node
NODE_FILES = {"nodes.apply", "nodes.bake", "nodes.conditioner", "nodes.erasure_check",
              "nodes.loader", "nodes.proving_ground", "nodes.trainer"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The pack modules `path` imports (relative imports resolved; `from . import x` as x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            if node.level - 1 > len(base):
                continue
            # `from ..unhype` in nodes/ climbs to the pack root, where unhype/ and nodes/ sit
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{a.name}" for a in node.names} & modules
            found.update(submodules or ({target} & modules))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    return found - {name}


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def test_the_import_graph_has_no_cycle():
    edges, state, stack = graph(), {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target in sorted(edges.get(name, ())):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name)


def test_nothing_imports_back_up():
    edges = graph()
    assert "nodes.sampling.dynamic_lora" in edges and "nodes.training.run" in edges
    for name, targets in edges.items():
        if name.startswith("unhype"):
            assert not {t for t in targets if t.startswith("nodes")}, (name, targets)
        elif name not in NODE_FILES and name != "nodes":
            assert not targets & NODE_FILES, (name, targets & NODE_FILES)


def test_the_sampling_machinery_needs_nothing_of_training():
    for name, targets in graph().items():
        if name.startswith("nodes.sampling"):
            assert not {t for t in targets if t.startswith("nodes.training")}, (name, targets)
