"""The structure of lib/, read statically: no import cycle (lazy imports inside functions count), the judge
independent of training, leaf modules importing nothing of lib, and every module saying what it is for."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lib import paths

LIB = Path(paths.__file__).resolve().parent

# Modules whose docstring's first line runs on into the next (not this helper's files; each owner ends the first
# line where its sentence ends and deletes the name here).
KNOWN_RUN_ON_FIRST_LINES: frozenset[str] = frozenset()  # every module's first line stands alone
LEAF_MODULES = ("lib.paths", "lib.yamlio", "lib.reward_names", "lib.vllm_cpu", "lib.stats", "lib.hardware")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module an `import`/`from ... import` anywhere in the tree names (functions' bodies included):
    `from a.b import c` names `a.b.c` when that is a module, else `a.b`."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            out.update(f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names)
    return out


def import_graph(root: Path = LIB) -> dict[str, set[str]]:
    """{module: the lib modules importing it runs}. Importing `lib.a.b` also runs `lib/a/__init__.py`, so each
    package on the way counts too, except the importer's own packages (they are being imported already)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for target in imported_names(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", known):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in known and not (name == step or name.startswith(step + ".")):
                    edges.add(step)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component with more than one module or a
    self-import, by Tarjan's algorithm; empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first within the component)."""
    start = min(comp)
    paths_to = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                return paths_to[v] + [start]
            if w not in paths_to:
                paths_to[w] = paths_to[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a component always has one


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """{module: an import chain from `start` to it} for every module importing `start` runs."""
    chains = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w not in chains:
                chains[w] = chains[v] + [w]
                queue.append(w)
    return chains


def _without(graph: dict[str, set[str]], edges: frozenset) -> dict[str, set[str]]:
    return {m: {t for t in targets if (m, t) not in edges} for m, targets in graph.items()}


# ----------------------------------------------------------------------------------------------- the checker itself

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_checker_finds_a_cycle_closed_by_a_lazy_import(tmp_path):
    lib = _write(tmp_path / "lib", {
        "__init__.py": "",
        "a.py": "from lib.b import f\n",
        "b.py": "def f():\n    from lib import c\n",
        "c.py": "import lib.a\n",
        "d.py": "from lib import a\n",
    })
    graph = import_graph(lib)
    assert graph["lib.b"] == {"lib.c"} and graph["lib.d"] == {"lib.a"}
    assert find_cycles(graph) == [["lib.a", "lib.b", "lib.c", "lib.a"]]
    assert find_cycles(_without(graph, frozenset({("lib.c", "lib.a")}))) == []


def test_checker_counts_package_inits_and_relative_imports(tmp_path):
    lib = _write(tmp_path / "lib", {
        "__init__.py": "",
        "judge/__init__.py": "from lib.judge.backends import X\n",
        "judge/backends.py": "from .types import T\nX = 1\ndef g():\n    from lib.train.roll import h\n",
        "judge/types.py": "T = 1\n",
        "train/__init__.py": "from lib.train.grpo import run\n",
        "train/grpo.py": "from lib.judge import X\ndef run(): ...\n",
        "train/roll.py": "def h(): ...\n",
    })
    graph = import_graph(lib)
    assert graph["lib.judge.backends"] == {"lib.judge.types", "lib.train", "lib.train.roll"}  # not its own package
    assert graph["lib.train.grpo"] == {"lib.judge"}
    assert find_cycles(graph) == [["lib.judge", "lib.judge.backends", "lib.train", "lib.train.grpo", "lib.judge"]]
    assert reachable(graph, "lib.judge.types") == {"lib.judge.types": ["lib.judge.types"]}
    assert reachable(graph, "lib.judge.backends")["lib.train.roll"] == ["lib.judge.backends", "lib.train.roll"]


# ----------------------------------------------------------------------------------------------- lib itself

def test_lib_has_no_import_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in lib/: " + "; ".join(" -> ".join(c) for c in cycles)


def test_judge_imports_nothing_from_training():
    graph = import_graph()
    for name in sorted(m for m in graph if m == "lib.judge" or m.startswith("lib.judge.")):
        train = {m: chain for m, chain in reachable(graph, name).items() if m == "lib.train" or m.startswith("lib.train.")}
        assert not train, f"{name} imports training: " + " -> ".join(min(train.values(), key=len))


def test_lib_never_imports_the_bench_tooling():
    """bench/ measures lib/; lib/ (what notebooks, the CLI and the server import) stands without it."""
    offenders = []
    for src in sorted(paths.LIB_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(src.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{src.relative_to(paths.PROJ_ROOT)}: {n}" for n in names if n == "bench" or n.startswith("bench.")]
    assert not offenders, offenders


@pytest.mark.parametrize("name", LEAF_MODULES)
def test_leaf_modules_import_no_lib(name):
    assert import_graph()[name] == set(), f"{name} is a leaf module: it may import no other lib module"


def first_line_problem(doc: str | None) -> str | None:
    """Why a module docstring's first line cannot stand alone as what the module is for, or None.

    >>> first_line_problem("Prompt data: the catalogue, the split."), first_line_problem("Statistics: bootstrap (every")
    (None, 'its first line ends mid-sentence: ...(every')
    """
    if not doc or not doc.strip():
        return "no module docstring"
    first = doc.strip().splitlines()[0].rstrip()
    if not first.endswith((".", ":", "?", ")", "`")):
        return f"its first line ends mid-sentence: ...{first[-6:]}"
    return None


def test_every_lib_module_says_what_it_is_for():
    problems = {}
    for path in sorted(LIB.rglob("*.py")):
        name = module_name(path, LIB)
        problem = first_line_problem(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))))
        if problem and name not in KNOWN_RUN_ON_FIRST_LINES:
            problems[name] = problem
    assert not problems, "module docstrings: " + "; ".join(f"{n}: {p}" for n, p in problems.items())


def test_run_on_allow_list_names_only_modules_that_still_need_it():
    files = {module_name(p, LIB): p for p in LIB.rglob("*.py")}
    fixed = sorted(n for n in KNOWN_RUN_ON_FIRST_LINES
                   if n not in files or not first_line_problem(ast.get_docstring(ast.parse(files[n].read_text(encoding="utf-8")))))
    assert not fixed, f"KNOWN_RUN_ON_FIRST_LINES names modules that are fine now, delete them: {fixed}"
