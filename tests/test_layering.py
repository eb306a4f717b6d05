"""What each layer may import, read from the source (ast), so a change that breaks a rule
of ARCHITECTURE.md fails here rather than in a review.

- The engine knows token ids only: nothing of the LSP side (server, documents, prompts,
  completer, backends, settings, benchmarks, CLI).
- The benchmarks never import the CLI (it imports them: that was a cycle).
- No module imports another's private (`_name`) names: what is shared gets a public name
  in one home.
- No import cycles in the package (`bench all` is dispatched by the CLI, since it runs
  the other benchmarks through `bench.cli`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "gemma_lsp"
LSP_SIDE = {"server", "framing", "scheduler", "stats", "completer", "context", "prompt", "postprocess", "text",
            "backends", "bench", "cli", "doctor", "config", "threads", "logs"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(name: str, f: Path, modules: dict[str, Path]) -> set[str]:
    """Every gemma_lsp module `name` imports, at the top or inside a function."""
    package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for cand in [target] + [f"{target}.{a.name}" for a in node.names]:
                if cand in modules and cand != name:
                    found.add(cand)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules and a.name != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, f, modules) for name, f in modules.items()}


def _top(name: str) -> str:
    return name.split(".")[1] if name.count(".") >= 1 else ""


def test_the_engine_imports_nothing_of_the_lsp_side():
    bad = {(m, dep) for m, deps in _graph().items() if m.startswith("gemma_lsp.engine")
           for dep in deps if _top(dep) in LSP_SIDE}
    assert not bad, sorted(bad)


def test_the_benchmarks_never_import_the_cli():
    bad = {(m, dep) for m, deps in _graph().items() if m.startswith("gemma_lsp.bench") for dep in deps
           if dep == "gemma_lsp.cli"}
    assert not bad, sorted(bad)


def test_no_private_names_cross_modules():
    modules = _modules()
    bad = []
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("gemma_lsp")):
                bad += [f"{name}: {a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], sorted(map(sorted, cycles))


def test_the_reader_sees_imports_inside_functions():
    """The rules above would pass vacuously if the import reader missed imports: the CLI
    imports the benchmarks inside a function, and so does the suite."""
    graph = _graph()
    assert {"gemma_lsp.bench.cli", "gemma_lsp.bench.all"} <= graph["gemma_lsp.cli"]
    assert "gemma_lsp.bench.cli" in graph["gemma_lsp.bench.all"]
    assert "gemma_lsp.engine.speculative" in graph["gemma_lsp.engine"]


def test_the_architecture_table_names_every_module():
    """ARCHITECTURE.md's file table is the map: a module it does not name is one a new
    maintainer cannot place."""
    doc = (ROOT.parent / "ARCHITECTURE.md").read_text()
    missing = [str(f.relative_to(ROOT)) for f in sorted(ROOT.rglob("*.py"))
               if f.name != "__init__.py" and f"`{f.relative_to(ROOT)}`" not in doc]
    assert not missing, missing
