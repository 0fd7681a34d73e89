"""The project's modules import downward only: no import cycle, whether the import sits at
the top of a file, inside a function, or is an importlib.import_module("...") string; and an
import deferred into a function says why (a comment beside it or just above it)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict:
    """module name → path, for the library and every script that imports it."""
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    files += sorted(ROOT.glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    return {_module_name(p): p for p in files if "__pycache__" not in p.parts}


def _resolve(name: str, modules: dict):
    """The project module an import of `name` loads last (a.b.c → a.b.c, else a.b)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, modules: dict):
    """(project module imported, line, inside a function?) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            deferred = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")
                    parent = parent[:len(parent) - (child.level - 1)]
                    base = ".".join(parent + ([base] if base else []))
                # `from a import b` loads a, and a.b when b is a module
                names = [base] + [f"{base}.{alias.name}" for alias in child.names]
            elif (isinstance(child, ast.Call) and getattr(child.func, "attr", getattr(child.func, "id", ""))
                  == "import_module" and child.args and isinstance(child.args[0], ast.Constant)):
                names = [child.args[0].value]
            for name in names:
                target = _resolve(name, modules)
                if target and target != own:
                    found.append((target, child.lineno, in_function))
            visit(child, deferred)

    visit(tree, False)
    return found


def import_graph():
    modules = project_modules()
    return {name: {target for target, _, _ in imports_of(path, modules)} for name, path in modules.items()}


def find_cycle(graph):
    """One cycle as a list of modules, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert "utils.aot.compiler" in graph and "utils.serial_link" in graph
    # imports inside functions and import_module strings count too
    assert "utils.aot.stage" in graph["0201tvm_no_optim"]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _has_reason(lines, lineno):
    """A comment on the import's line or on one of the few lines above it (one comment may
    serve a small block of imports)."""
    return any("#" in lines[i - 1] for i in range(max(1, lineno - 4), lineno + 1))


def deferred_import_lines(path: Path) -> list:
    """Lines of every import statement (of anything) inside a function."""
    found = []
    for func in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n.lineno for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return sorted(set(found))


@pytest.mark.parametrize("module", sorted(project_modules()))
def test_deferred_imports_state_a_reason(module):
    path = project_modules()[module]
    lines = path.read_text().splitlines()
    silent = [line for line in deferred_import_lines(path) if not _has_reason(lines, line)]
    assert not silent, (f"{path.relative_to(ROOT)}: imports inside functions at lines {silent} without a "
                        f"reason; move them to the top, or say why they wait")
