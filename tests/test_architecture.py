"""The layering rules of docs/architecture.md, checked on the source (no imports run).

Sizes keep the places where features land readable (issue 16); the import rules keep the floors
from running back up; Ray/Optuna private attributes live in one compat module, so a version bump
has one place to look.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vptsearch"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
COMPAT = "vptsearch.search._compat"
# Private attributes of Ray Tune / Optuna objects that vptsearch relies on (only in COMPAT).
# (The searcher keeps OptunaSearch's attribute names such as _ot_study for its own state, so that
# older snapshots restore: those are not listed.)
THIRD_PARTY_PRIVATE = (
    "_trial_info", "_trial_id", "_sync_with_backend", "_write_log", "_replay_result", "_get_trials",
    "_gamma", "_global_node", "_global_registry",
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, node: ast.ImportFrom) -> list[str]:
    """The vptsearch modules an ``from X import a, b`` names (a submodule when ``X.a`` is one)."""
    if node.level:
        pkg = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
        base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    if not target.startswith("vptsearch"):
        return []
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return found or ([target] if target in MODULES else [])


def imports(name: str, *, module_level: bool) -> set[str]:
    """vptsearch modules imported by ``name``: at module level (outside TYPE_CHECKING) or anywhere."""
    out: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and (top or not module_level):
                out.update(a.name for a in child.names if a.name in MODULES)
            elif isinstance(child, ast.ImportFrom) and (top or not module_level):
                out.update(_resolve(name, child))
            visit(child, inner)

    visit(_tree(name), True)
    out.discard(name)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (c := dfs(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := dfs(n)):
            return c
    return None


def test_no_import_circle() -> None:
    # Function-level imports count: one that closes a circle only hides it. A package importing its
    # own submodules to curate its namespace is not a floor rule, so that edge is left out.
    graph = {n: {m for m in imports(n, module_level=False) if not m.startswith(n + ".")} for n in MODULES}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


def _imports_across(floor: str, forbidden: tuple[str, ...]) -> set[tuple[str, str]]:
    return {
        (n, m)
        for n in MODULES
        if n.startswith(floor)
        for m in imports(n, module_level=False)
        if m.startswith(forbidden)
    }


def test_models_import_nothing_from_data_or_search() -> None:
    bad = _imports_across("vptsearch.models", ("vptsearch.data", "vptsearch.search"))
    assert not bad, f"models/ imports data/ or search/: {sorted(bad)}"


def test_data_imports_nothing_from_search() -> None:
    bad = _imports_across("vptsearch.data", ("vptsearch.search",))
    assert not bad, f"data/ imports search/: {sorted(bad)}"


@pytest.mark.parametrize("module", ["vptsearch.spec", "vptsearch._trial_config", "vptsearch._catalogue"])
def test_light_modules_import_no_torch(module: str) -> None:
    # the CLI parses and validates a space before anything heavy is needed
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} imports torch"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_and_function_sizes(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]}: {lines} lines (at most {MAX_MODULE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(_tree(name))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{MODULES[name]}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_third_party_private_attributes_only_in_compat() -> None:
    used = {
        (n, node.attr)
        for n in MODULES
        if n != COMPAT
        for node in ast.walk(_tree(n))
        if isinstance(node, ast.Attribute) and node.attr in THIRD_PARTY_PRIVATE
    }
    assert not used, f"private Ray/Optuna attributes outside {COMPAT}: {sorted(used)}"


def _imported_modules(name: str) -> set[str]:
    out = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module)
    return out


def test_third_party_private_modules_only_in_compat() -> None:
    used = {
        (n, m)
        for n in MODULES
        if n != COMPAT
        for m in _imported_modules(n)
        if m.split(".")[0] in ("ray", "optuna") and any(p.startswith("_") for p in m.split(".")[1:])
    }
    assert not used, f"private Ray/Optuna modules imported outside {COMPAT}: {sorted(used)}"
