"""What each layer may import, read from the source (ast), so a change that breaks a rule
of ARCHITECTURE.md fails here rather than in a review.

- Each folder imports only what ARCHITECTURE.md's layer table allows (`ALLOWED`): the
  engine knows token ids only (nothing of lsp/, complete/, models/, backends/, settings,
  CLI), complete/ and everything below it import no pygls or lsprotocol.
- The package never imports the benchmarks (`benchmarks/`, outside the wheel), and the
  benchmarks never import the CLI (`gemma-lsp bench` runs them as a child process).
- No module imports another's private (`_name`) names: what is shared gets a public name
  in one home.
- No import cycles, package and benchmarks together (`bench all` is dispatched by
  `benchmarks/__main__.py`, since the suite runs the others through `benchmarks.cli`).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).parent.parent
ROOT = REPO / "gemma_lsp"
BENCH = REPO / "benchmarks"
# What each folder may import of the package ("" is the package's __init__: its version).
# The engine and quant know token ids and tensors only; models/ knows files; backends/
# run a GenerateRequest somewhere; complete/ is text in, text out; lsp/ is the editor's side.
ALLOWED = {
    "quant": {"", "quant", "paths", "errors"},
    "engine": {"", "engine", "quant", "paths", "errors", "names", "faults"},
    "models": {"", "models", "engine", "quant", "paths", "errors", "names"},
    "backends": {"", "backends", "engine", "models", "config", "paths", "errors", "names", "threads", "faults"},
    "complete": {"", "complete", "backends", "engine", "models", "config", "text", "errors", "names", "faults"},
    "lsp": {"", "lsp", "complete", "engine", "config", "text", "errors", "faults", "threads"},
}
NO_LSP_LIBRARIES = ("quant", "engine", "models", "backends", "complete")  # pygls and lsprotocol stay in lsp/


def _modules() -> dict[str, Path]:
    out = {}
    for f in [*ROOT.rglob("*.py"), *BENCH.rglob("*.py")]:
        parts = list(f.relative_to(REPO).with_suffix("").parts)
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


def test_each_folder_imports_only_what_architecture_md_allows():
    bad = {(m, dep) for m, deps in _graph().items() if m.startswith("gemma_lsp.") and _top(m) in ALLOWED
           for dep in deps if dep.startswith("gemma_lsp") and _top(dep) not in ALLOWED[_top(m)]}
    assert not bad, sorted(bad)


def test_below_the_lsp_folder_nothing_imports_pygls():
    bad = []
    for name, f in _modules().items():
        if name.startswith("gemma_lsp.") and _top(name) in NO_LSP_LIBRARIES:
            for node in ast.walk(ast.parse(f.read_text())):
                mods = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else
                        [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                bad += [f"{name}: {m}" for m in mods if m.split(".")[0] in ("pygls", "lsprotocol")]
    assert not bad, bad


def test_the_benchmarks_never_import_the_cli():
    bad = {(m, dep) for m, deps in _graph().items() if m.startswith("benchmarks") for dep in deps
           if dep == "gemma_lsp.cli"}
    assert not bad, sorted(bad)


def test_the_package_never_imports_the_benchmarks():
    bad = {(m, dep) for m, deps in _graph().items() if m.startswith("gemma_lsp") for dep in deps
           if dep.startswith("benchmarks")}
    assert not bad, sorted(bad)


def test_no_private_names_cross_modules():
    modules = _modules()
    bad = []
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(("gemma_lsp", "benchmarks"))):
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
    """The rules above would pass vacuously if the import reader missed imports: the
    benchmarks' entry point imports the suite inside a function."""
    graph = _graph()
    assert {"benchmarks.cli", "benchmarks.suite"} <= graph["benchmarks.__main__"]
    assert "benchmarks.cli" in graph["benchmarks.suite"]
    assert "gemma_lsp.engine.speculative" in graph["gemma_lsp.engine"]


def test_every_backend_declares_the_protocol_and_defines_it():
    """No duck typing: what runs a GenerateRequest subclasses engine.request.Backend and
    defines generate and warm itself (a Protocol subclass would silently inherit `...`)."""
    from benchmarks.llama_engine import LlamaCppEngine
    from gemma_lsp.backends.local import LocalBackend
    from gemma_lsp.backends.openai import OpenAIBackend
    from gemma_lsp.engine import Engine
    from gemma_lsp.engine.request import Backend

    for cls in (Engine, OpenAIBackend, LocalBackend, LlamaCppEngine):
        assert Backend in cls.__mro__, cls  # declared (issubclass does not take a protocol with data members)
        for method in ("generate", "warm"):
            owner = next(c for c in cls.__mro__ if method in vars(c))
            assert owner is not Backend, (cls, method)


FUNCTION_LINES, MODULE_LINES = 60, 300


def test_functions_and_modules_stay_small():
    """A function over ~60 lines or a module over ~300 is split, or says why not: a comment
    with `size:` on its def line (function) or in its first lines (module)."""
    too_long = []
    for f in sorted(ROOT.rglob("*.py")):
        lines = f.read_text().splitlines()
        if len(lines) > MODULE_LINES and not any("size:" in line for line in lines[:15]):
            too_long.append(f"{f.relative_to(ROOT)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > FUNCTION_LINES and "size:" not in lines[node.lineno - 1]:
                    too_long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, too_long


def test_the_architecture_table_names_every_module():
    """ARCHITECTURE.md's file table is the map: a module it does not name is one a new
    maintainer cannot place."""
    doc = (REPO / "ARCHITECTURE.md").read_text()
    files = [f.relative_to(ROOT) for f in sorted(ROOT.rglob("*.py"))] + [f.relative_to(REPO) for f in sorted(BENCH.rglob("*.py"))]
    missing = [str(f) for f in files if f.name != "__init__.py" and f"`{f}`" not in doc]
    assert not missing, missing
