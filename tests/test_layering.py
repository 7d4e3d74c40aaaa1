"""The package's layers point one way: render, scenes, priors, guidance and export never import
the benchmarks or the command line, and no two parts of ``sds3d`` import each other in a cycle.

Every ``import sds3d...`` statement counts, including those inside functions (lazy imports are
still dependencies). A part is a subpackage (``sds3d/priors``) or a top-level module
(``sds3d/config.py``)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import sds3d

ROOT = Path(sds3d.__file__).parent
LOWER = ("render", "scenes", "priors", "guidance", "export")
UPPER = ("bench", "cli")


def part_of(module: str) -> str:
    """'sds3d.priors.archs' -> 'priors'; 'sds3d.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, dict[str, set[str]]]:
    """part -> imported part -> the files (relative to the package) that import it."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sds3d":
                names = [f"sds3d.{a.name}" for a in node.names] if node.module == "sds3d" else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "sds3d"]
            else:
                continue
            for name in names:
                if part_of(name) != part_of(module):
                    graph[part_of(module)][part_of(name)].add(str(path.relative_to(ROOT)))
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle of the part graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_the_known_imports() -> None:
    graph = import_graph()
    # the parser must find real edges, lazy ones included, or the checks below prove nothing
    assert "bench/speed.py" in graph["bench"]["priors"]
    assert "priors" in graph["config"] and "cameras" in graph["export"]  # export no longer imports scenes (Scene protocol)
    assert "bench" in graph["cli"]  # cli builds the bench subcommand inside a function


def test_lower_layers_never_import_bench_or_cli() -> None:
    graph = import_graph()
    bad = {(low, up): sorted(graph[low][up]) for low in LOWER for up in UPPER if graph[low].get(up)}
    assert bad == {}


def test_no_import_cycle_between_parts() -> None:
    assert find_cycle(import_graph()) is None


def test_find_cycle_reports_a_cycle() -> None:
    graph: dict[str, dict[str, set[str]]] = {"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}, "d": {"a": {"w"}}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    del graph["c"]["a"]
    assert find_cycle(graph) is None
