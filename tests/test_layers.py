"""The package's shape: stages stacked in layers, no import cycle, no upward import, short modules.

Every module of `transplant/` and `hypernet/` is parsed with `ast` (nothing is imported, except
in the last test). Each `import` and `from ... import` counts, at module level and inside
functions (and under `if TYPE_CHECKING:`), relative or absolute:

* `import a.b.c` is an edge to `a.b.c`;
* `from a.b import c` is an edge to `a.b.c` when that is a module, else to `a.b`;
* a package `__init__.py` that only re-exports (docstring, imports, `__all__`-style dunders) is
  looked through: `from transplant.methods.initializers import get_initializer` is an edge to
  `transplant.methods.initializers.registry`, where the name comes from. Such an `__init__` may
  import any of its own package's modules, whatever their layer.

A module's layer is that of the longest entry of `LAYERS` that is a prefix of its name; a
module may import only from its own layer or lower ones.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transplant", "hypernet")
MAX_LINES = 450

# Layers, bottom (0) to top (6): a module may import from its own layer and lower ones only.
LAYERS: dict[str, int] = {
    "transplant.common": 0,      # errors, progress, texts, optional, fingerprint
    "transplant.core": 1,        # vocab, align, plan (no model needed)
    "transplant.io": 2,          # shardio, sources, checkpoint, configs, specials, tokenizer_out, validate, outdir, card
    "transplant.measure": 3,     # evaluate, the model adapter
    "transplant.methods": 4,     # initializers/, auxspace, resources, vectors, sparse_coding, crosslingual, calibrate, planner, auto
    "transplant.train": 5,       # trainloop, heal, tokenizer_train, extend
    "transplant": 6,             # front ends: __init__, api, runspec, recipes, demo
    "transplant.cli": 6,         # main, tokenizer, vectors
    "hypernet.model": 1,         # the network itself (needs only common)
    "hypernet.data": 1,          # tokenizer sampling (uses core)
    "hypernet.settings": 1,      # the training settings, declared once (torch-free)
    "hypernet.folders": 2,       # what a network folder and a run folder are, and their checks
    "hypernet.registry": 2,      # known networks: the store and the matching (uses io)
    "hypernet.export": 2,        # a network folder from a training checkpoint
    "hypernet.source": 2,        # the frozen base model, loaded in its dtype (uses io)
    "hypernet.loop": 5,          # the training loop: its state, stage 1 and stage 2 steps (uses train.trainloop)
    "hypernet.training": 5,      # training: inputs, setup, publishing
    "hypernet.cli": 6,           # the `hypernet` command
    "hypernet": 6,               # hypernet/__init__: re-exports model and train
}

# Names a re-exporting `__init__` may assign besides its imports.
_REEXPORT_DUNDERS = {"__all__", "__version__", "__author__", "__doc__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _discover() -> dict[str, Path]:
    """Every module of the packages: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _discover()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    best = max((key for key in LAYERS if module == key or module.startswith(key + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in {Path(__file__).name}")
    return LAYERS[best]


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _internal(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _base_of(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` in `module` reads from."""
    if not node.level:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def reexports_only(module: str) -> bool:
    """An `__init__.py` whose body is only a docstring, imports and dunder assignments."""
    if not _is_package(module):
        return False
    for stmt in TREES[module].body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue
        targets = (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign)
                   else None)
        if targets and all(isinstance(t, ast.Name) and t.id in _REEXPORT_DUNDERS for t in targets):
            continue
        return False
    return True


def _reexported(package: str) -> dict[str, tuple[str, str | None]]:
    """name -> (module, name in it) it is imported from, for a re-exporting package `__init__`
    (`import a.b as c` gives ("a.b", None))."""
    names: dict[str, tuple[str, str | None]] = {}
    for stmt in TREES[package].body:
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                names[alias.asname or alias.name] = (_base_of(package, stmt), alias.name)
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                names[alias.asname or alias.name.split(".")[0]] = (alias.name if alias.asname else alias.name.split(".")[0], None)
    return names


def _target(base: str, name: str, seen: frozenset = frozenset()) -> str:
    """What `from base import name` depends on: the submodule `name`, or the module that
    defines `name` when `base` is a re-exporting package, else `base` itself."""
    if f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    if base in MODULES and base not in seen and reexports_only(base):
        origin = _reexported(base).get(name)
        if origin is not None:
            source, source_name = origin
            found = source if source_name is None else _target(source, source_name, seen | {base})
            if _internal(found):
                return found
    return base


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported internal module, line) for every import anywhere in `module`."""
    edges = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            edges += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            base = _base_of(module, node)
            edges += [(_target(base, alias.name) if alias.name != "*" else base, node.lineno) for alias in node.names]
    return [(target, line) for target, line in edges if _internal(target) and target != module]


GRAPH = {module: imports_of(module) for module in MODULES}


def defined_names(module: str) -> set[str] | None:
    """Names bound at the top of `module` (None when it cannot tell: a module `__getattr__` or a
    star import)."""
    names: set[str] = set()
    body = list(TREES[module].body)
    while body:
        stmt = body.pop()
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if stmt.name == "__getattr__":
                return None
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(stmt, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody"):
                body += getattr(stmt, field, [])
            body += [s for h in getattr(stmt, "handlers", []) for s in h.body]
    return names


def missing_names(module: str) -> list[str]:
    """`from M import name` in `module` where M is one of ours and defines no `name`."""
    out = []
    for node in ast.walk(TREES[module]):
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        base = _base_of(module, node)
        if base not in MODULES:
            continue
        names = defined_names(base)
        for alias in node.names:
            if names is not None and alias.name != "*" and alias.name not in names and f"{base}.{alias.name}" not in MODULES:
                out.append(f"{_where(module, node.lineno)} imports {alias.name!r} from {base}, which has none")
    return out


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] through each group of mutually importing modules (each strongly
    connected component of more than one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph is a few dozen modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the first module of `group` (breadth-first within the group)."""
    start = min(group)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start] + path[::-1][1:] + [start] if node != start else [start, start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in {group}")


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if not any(m == k or m.startswith(k + ".") for k in LAYERS)]
    assert not missing, f"modules in no layer (add their folder to LAYERS): {missing}"


def test_internal_imports_name_existing_modules():
    """An import of a module that is not there (an old path left behind by a move) fails only when
    that line runs; this finds it in every function."""
    broken = [f"{_where(m, line)} imports {target}" for m, edges in GRAPH.items() for target, line in edges
              if target not in MODULES]
    assert not broken, "imports of modules that do not exist:\n  " + "\n  ".join(broken)


def test_imported_names_exist():
    """`from transplant.x import name` where x defines no `name` (a function moved elsewhere)."""
    broken = [line for module in MODULES for line in missing_names(module)]
    assert not broken, "imports of names that are not there:\n  " + "\n  ".join(broken)


def test_no_import_cycle():
    graph = {m: {t for t, _ in edges if t in MODULES} for m, edges in GRAPH.items()}
    found = cycles(graph)
    report = []
    for cycle in found:
        steps = [f"{a} -> {b}  ({_where(a, next(line for t, line in GRAPH[a] if t == b))})"
                 for a, b in zip(cycle, cycle[1:])]
        report.append("\n    ".join(steps))
    assert not found, f"{len(found)} import cycle(s):\n    " + "\n  and\n    ".join(report)


def test_no_upward_import():
    upward = []
    for module, edges in GRAPH.items():
        exempt = reexports_only(module)
        for target, line in edges:
            if target not in MODULES or (exempt and target.startswith(module + ".")):
                continue
            if layer_of(target) > layer_of(module):
                upward.append(f"{_where(module, line)}: {module} (layer {layer_of(module)}) imports "
                              f"{target} (layer {layer_of(target)})")
    assert not upward, f"{len(upward)} imports go up a layer:\n  " + "\n  ".join(sorted(upward))


def test_modules_are_short():
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{p} ({n})" for p, n in sorted(long.items(), key=lambda kv: -kv[1]))


def test_test_files_never_import_one_another():
    """What tests share lives in helper modules (builders, arch_builders, cli_helpers): a test file
    imported by another runs its module-level setup twice and ties the two files' fates together."""
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert not found, found


def _import_transplant_loads_torch() -> bool:
    probe = "import sys, transplant; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


def test_import_transplant_does_not_import_torch():
    """`import transplant` (e.g. for `transplant --help`) stays light: torch loads on first use."""
    assert not _import_transplant_loads_torch(), "`import transplant` imported torch"


def test_cli_help_does_not_import_torch():
    """Every `transplant ... --help` is answered without torch or transformers (they take seconds to import)."""
    probe = ("import sys\nimport click\nfrom click.testing import CliRunner\nfrom transplant.cli import cli\n"
             "def walk(cmd, path):\n"
             "    yield path\n"
             "    if isinstance(cmd, click.Group) and path[:1] != ['hypernet']:\n"
             "        ctx = click.Context(cmd)\n"
             "        for name in cmd.list_commands(ctx):\n"
             "            yield from walk(cmd.get_command(ctx, name), path + [name])\n"
             "for path in walk(cli, []):\n"
             "    if path[:1] == ['hypernet']:  # the hypernet program: its package imports torch, as\n"
             "        continue  # `hypernet --help` always did (listed by `transplant --help` without it)\n"
             "    result = CliRunner().invoke(cli, path + ['--help'])\n"
             "    assert result.exit_code == 0, (path, result.output)\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"--help imported {out.stdout.strip()}"
