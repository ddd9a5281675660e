"""The library's floors: golf/'s import graph, read from the source with ast (every `import` and `from ... import`
anywhere in a module, inside functions included), has no cycle; golf/config.py stands on golf/errors.py alone;
every script resolves its configuration through golf/choices.py, which brings in every owner's check.

    python -m pytest tests/test_imports.py -q
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

from helpers import REPO

GOLF = Path(REPO) / "golf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(GOLF.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def golf_imports(source: str, modules: set[str]) -> set[str]:
    """The golf modules `source` imports anywhere in it; `from golf.x import y` counts golf.x.y where that is a
    module, else golf.x."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    """{golf module: the golf modules it imports}, for every .py file under golf/."""
    paths = sorted(GOLF.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): golf_imports(p.read_text(encoding="utf-8"), modules) - {_module_name(p)} for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    state, stack = {}, []  # state: 1 on the current path, 2 finished

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_names_one_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_function_level_imports_count():
    source = "import os\nfrom golf.errors import GolfError\ndef f():\n    from golf.config import Config\n    import golf.x\n"
    assert golf_imports(source, {"golf.errors", "golf.config", "golf.x"}) == {"golf.errors", "golf.config", "golf.x"}
    assert golf_imports("from golf import a, b\n", {"golf", "golf.a"}) == {"golf.a", "golf"}


def test_golf_has_no_import_cycle():
    graph = import_graph()
    assert {"golf.config", "golf.errors", "golf.results", "golf.compute"} <= graph.keys()  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in golf/: " + " -> ".join(cycle)


def test_config_stands_on_errors_alone():
    graph = import_graph()
    assert graph["golf.config"] == {"golf.errors"}
    assert graph["golf.errors"] == set()


def test_results_reads_compute_one_way():
    graph = import_graph()
    assert "golf.compute" in graph["golf.study"]  # the study costs its arms ...
    assert not graph["golf.compute"] & {"golf.results", "golf.study", "golf.tables", "golf.plots"}  # ... not back


def test_scripts_resolve_their_config_with_every_owners_check():
    """A script that took config_from_cli / resolve_config from golf.config would skip the checks of owners it
    happens not to import (eval_bpb.py imports no teacher)."""
    for path in sorted(Path(REPO).glob("*.py")) + sorted((Path(REPO) / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "golf.config":
                taken = {a.name for a in node.names} & {"config_from_cli", "resolve_config"}
                assert not taken, f"{path.name} takes {taken} from golf.config; take it from golf.choices"
    code = "import json, golf.choices, golf.config; print(json.dumps(sorted(golf.config.OWNER_CHECKS)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["distill_draws", "distill_seed_faithful", "distill_tail", "distill_target",
                                      "distill_teacher"]


def test_reading_results_loads_no_torch():
    """run.sh asks `python -m golf.results --is-done` before every run: it must not pay for torch (nor for
    matplotlib or scipy, imported where a plot or a test needs them)."""
    code = ("import sys, golf.results; heavy = {'torch', 'matplotlib', 'scipy'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
