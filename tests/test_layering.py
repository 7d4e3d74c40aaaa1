"""The package's layers point one way, as docs/design.md's layer table says: a part imports only
parts on lower levels (so render, scenes, priors, guidance and export never import the
benchmarks or the command line, nor each other), every part is in the table, and no two modules
of ``sds3d`` import each other in a cycle.

Every ``import sds3d...`` statement counts, including those inside functions (lazy imports are
still dependencies). A part is a subpackage (``sds3d/priors``) or a top-level module
(``sds3d/config.py``)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import sds3d

ROOT = Path(sds3d.__file__).parent
DESIGN = ROOT.parent / "docs" / "design.md"
LOWER = ("render", "scenes", "priors", "guidance", "export")
UPPER = ("bench", "cli")


def part_of(module: str) -> str:
    """'sds3d.priors.archs' -> 'priors'; 'sds3d.cli' -> 'cli'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_imports() -> dict[str, set[str]]:
    """module -> the sds3d modules it imports (``from sds3d.a import b`` counts ``sds3d.a.b`` when
    that is a module, else ``sds3d.a``)."""
    modules = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for module, path in sorted(modules.items()):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sds3d":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "sds3d"}
        edges[module] = found - {module}
    return edges


def import_graph() -> dict[str, dict[str, set[str]]]:
    """part -> imported part -> the modules that import it."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for module, names in module_imports().items():
        for name in names:
            if part_of(name) != part_of(module):
                graph[part_of(module)][part_of(name)].add(module)
    return graph


def design_levels() -> dict[str, int]:
    """part -> level, from the layer table of docs/design.md (rows ``| level | parts | ... |``)."""
    levels: dict[str, int] = {}
    for line in DESIGN.read_text().splitlines():
        if m := re.match(r"\|\s*(\d+)\s*\|([^|]+)\|", line):
            for part in m.group(2).split(","):
                levels[part.strip()] = int(m.group(1))
    return levels


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
    assert "sds3d.bench.speed" in graph["bench"]["priors"]
    assert "priors" in graph["config"] and "cameras" in graph["export"]  # export no longer imports scenes (Scene protocol)
    assert "bench" in graph["cli"]  # cli builds the bench subcommand inside a function


def test_lower_layers_never_import_bench_or_cli() -> None:
    graph = import_graph()
    bad = {(low, up): sorted(graph[low][up]) for low in LOWER for up in UPPER if graph[low].get(up)}
    assert bad == {}


def test_no_import_cycle_between_parts() -> None:
    assert find_cycle(import_graph()) is None


def test_no_import_cycle_between_modules() -> None:
    edges = module_imports()
    assert "sds3d.scenes.nerf_field" in edges["sds3d.scenes.nerf"]  # module-level edges are seen
    assert find_cycle({m: {n: set() for n in names} for m, names in edges.items()}) is None


def test_every_import_goes_down_the_design_table() -> None:
    levels = design_levels()
    assert levels["cameras"] == 0 and levels["cli"] == max(levels.values())  # the table was read
    parts = {part_of(m) for m in module_imports()} - {"sds3d"}
    assert parts - set(levels) == set(), "add the new part to docs/design.md's layer table"
    graph = import_graph()
    bad = {
        f"{low} (level {levels[low]}) imports {up} (level {levels[up]})": sorted(graph[low][up])
        for low in graph
        for up in graph[low]
        if low in levels and up in levels and levels[up] >= levels[low]
    }
    assert bad == {}


def test_find_cycle_reports_a_cycle() -> None:
    graph: dict[str, dict[str, set[str]]] = {"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}, "d": {"a": {"w"}}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    del graph["c"]["a"]
    assert find_cycle(graph) is None


def test_every_file_keeps_to_400_lines() -> None:
    """docs/design.md: 100-400 lines a file; a longer one is split along its seams."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert sizes["scenes/gaussians.py"] > 100  # the files were read
    assert {name: n for name, n in sizes.items() if n > 400} == {}
