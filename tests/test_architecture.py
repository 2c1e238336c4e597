"""The layout's rules (issue 9), checked on the source with `ast`:

- no import cycle among `tradeoff` modules, counting imports inside functions as well as at
  module level (module granularity: an edge A -> B for every `import tradeoff.B` /
  `from tradeoff.B import x` / `from tradeoff import B` anywhere in A; a package's own
  `__init__` is left out of the edges of its submodules' parents so that `from tradeoff.x.y import z`
  counts as an edge to `tradeoff.x.y` only);
- only `tradeoff/commands/` imports argparse or calls print;
- `import tradeoff` and the NumPy-only public names load neither torch nor matplotlib.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tradeoff"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules) -> str | None:
    """The longest known module that `name` (a dotted import target) names or lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.Module, here: str, modules) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here.split(".")[: len(here.split(".")) - node.level + (1 if here in _packages(modules) else 0)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "tradeoff":
                continue
            resolved = _resolve(target, modules)
            if resolved and resolved != here:
                out.add(resolved)
    return out


def _packages(modules) -> set[str]:
    return {name for name in modules if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(tree, name, modules) for name, tree in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # commands import the library inside their functions only: the edges must still be there.
    assert "tradeoff.search.run" in graph["tradeoff.commands.search"]


def test_no_import_cycle_among_tradeoff_modules():
    graph = import_graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_search_never_imports_report_or_plots():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("tradeoff.search"):
            assert not {t for t in targets if t.startswith("tradeoff.report") or t.startswith("tradeoff.commands")}, name


def test_only_commands_import_argparse_or_print():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if PACKAGE / "commands" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
                offenders.append(f"{path.name}:{node.lineno} imports argparse")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
                offenders.append(f"{path.name}:{node.lineno} imports argparse")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} calls print")
    assert not offenders, "\n".join(offenders)


def test_import_tradeoff_and_the_numpy_api_load_neither_torch_nor_matplotlib():
    code = (
        "import sys\n"
        "import tradeoff\n"
        "from tradeoff import load_cache, run_search, ExitRule, ExitCache, SearchResult, score_thresholds\n"
        "from tradeoff import read_rule, write_rule\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_names_resolve_and_unknown_names_raise():
    import tradeoff

    for name in tradeoff.__all__:
        assert getattr(tradeoff, name) is not None
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tradeoff.nope  # noqa: B018
    assert set(tradeoff.__all__) <= set(dir(tradeoff))
