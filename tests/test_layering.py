"""The layering of ``src/scrutiny``: lower layers never import upper ones, no import cycles.

Every module is parsed with :mod:`ast` (not imported) and EVERY import statement
counts, including the lazy ones inside functions and under ``TYPE_CHECKING``:
a lazy import is still a dependency. An import of ``scrutiny.x.y`` is an edge to
the module ``scrutiny.x.y``; ``from scrutiny.x import y`` is an edge to the
module ``scrutiny.x.y`` when it exists, else to the package ``scrutiny.x`` (its
``__init__``). Implicit imports of parent packages are not edges.

The registry's loading of the built-in method packages by name
(``scrutiny.registry._BUILTIN_PACKAGES``) is the one sanctioned dynamic import:
it is how a lower layer reaches an upper one by name (the zoo's adversarial
recipes, ensembles, metrics) without importing it. Any other dynamic import of
a literal ``scrutiny`` module name (``importlib.import_module("scrutiny...")``,
``__import__``) counts as an edge.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "scrutiny"

#: The layers, lowest first. A component is a top-level module or subpackage of
#: ``scrutiny`` (``"scrutiny"`` itself is the package root's ``__init__``, which
#: re-exports errors, registry and types). A module may import modules of its own
#: component and of components in LOWER layers; components that share a layer are
#: independent and never import each other. Documented in docs/architecture.md
#: ("Layers"); the test below keeps the two in step.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),                              # exceptions
    ("validation", "params", "progress", "geometry"),  # argument checks, declared hyperparameters,
    #                                                  the progress bar, threat-set geometry
    ("types", "losses"),                      # ThreatModel, Tags, results; the shared objectives
    ("base", "registry"),                     # Method, seeding, grad_wrt; register / create
    ("scrutiny", "data", "plot"),             # the package root; datasets; figures of results
    ("models",),                              # wrappers, zoo, training, hooks, adaptive front ends
    ("attacks", "explain", "certify"),        # the methods on a model
    ("metrics", "defenses"),                  # trust of explanations; defenses (use attacks)
    ("audit", "testing"),                     # over every method: the audit, the common checks
    ("cli",),                                 # the command line
)

_IMPORTERS = {"import_module", "__import__"}


# ---------------------------------------------------------------- the walker
def module_name(path: Path, src: Path = PACKAGE.parent) -> str:
    """``src/scrutiny/a/b.py`` -> ``scrutiny.a.b``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """The longest prefix of ``name`` that is a scrutiny module (None outside scrutiny)."""
    if name != "scrutiny" and not name.startswith("scrutiny."):
        return None
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(tree: ast.AST, name: str, is_package: bool, modules: set[str]
               ) -> list[tuple[str, int]]:
    """``(imported scrutiny module, line)`` for every import anywhere in ``tree``."""
    package = name if is_package else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []

    def add(target: str, line: int) -> None:
        resolved = _resolve(target, modules)
        if resolved is not None:
            out.append((resolved, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                add(sub if sub in modules else mod, node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if fname in _IMPORTERS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value, node.lineno)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over every ``.py`` file under ``package``."""
    files = {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for target, line in imports_of(tree, name, path.name == "__init__.py", modules):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    succ = {v: [w for w in ws if w in graph] for v, ws in graph.items()}
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            if i < len(succ[v]):
                work.append((v, i + 1))
                w = succ[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if work:  # propagate to the caller once v is done
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in succ[v]:
                    found.append(sorted(comp))
    return sorted(found)


def component(module: str) -> str:
    """``scrutiny.attacks.base`` -> ``attacks``; the root package is ``scrutiny``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(layers: tuple[tuple[str, ...], ...] = LAYERS) -> dict[str, int]:
    return {c: i for i, names in enumerate(layers) for c in names}


def upward_imports(graph: Mapping[str, Mapping[str, int]],
                   layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every import of a module in a higher layer, or of an independent sibling component."""
    rank = layer_of(layers)
    bad = []
    for src, targets in graph.items():
        a = component(src)
        for dst, line in targets.items():
            b = component(dst)
            if a == b:
                continue
            if rank[b] > rank[a]:
                bad.append(f"{src}:{line} imports {dst}: layer {rank[a]} ({a}) must not import "
                           f"layer {rank[b]} ({b})")
            elif rank[b] == rank[a]:
                bad.append(f"{src}:{line} imports {dst}: {a} and {b} share layer {rank[a]} and "
                           f"are independent")
    return sorted(bad)


def _cycle_path(graph: Mapping[str, Mapping[str, int]], comp: list[str]) -> str:
    """One shortest cycle through the component's first module, for the failure message."""
    members, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    queue = [start]
    for v in queue:  # breadth first, within the component
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                path.reverse()
                hops = zip(path, [*path[1:], start], strict=True)
                return " -> ".join(f"{m} (line {graph[m][n]})" for m, n in hops) + f" -> {start}"
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return ", ".join(comp)  # pragma: no cover - a component always has a cycle


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


# ---------------------------------------------------------------- the real tree
def test_every_component_has_exactly_one_layer(graph):
    names = [c for layer in LAYERS for c in layer]
    assert len(names) == len(set(names)), "a component is in two layers"
    present = {component(m) for m in graph}
    missing = sorted(present - set(names))
    assert not missing, f"add these components of src/scrutiny to LAYERS (and the docs): {missing}"
    stale = sorted(set(names) - present)
    assert not stale, f"LAYERS names components that do not exist: {stale}"


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_cycle_path(graph, c) for c in cycles)


def test_no_upward_imports(graph):
    bad = upward_imports(graph)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_moved_pieces_stay_low(graph):
    """The cross-layer links of issue 18 stay cut (a regression test with named modules)."""
    assert not [m for m in graph["scrutiny.types"] if component(m) == "attacks"]
    assert "scrutiny.defenses.adaptive" not in graph["scrutiny.attacks.base"]
    assert not [m for m in graph["scrutiny.models.zoo"] if component(m) == "defenses"]
    assert not [m for m in graph["scrutiny.attacks.whitebox.feature"] if component(m) == "explain"]


def test_docs_list_the_same_layers():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| *(\d+) *\|(.*)\|\s*$", section, flags=re.M)
    documented = tuple(tuple(re.findall(r"`([\w.]+)`", names)) for _, names in rows)
    assert [int(i) for i, _ in rows] == list(range(len(rows)))
    assert documented == LAYERS


# ---------------------------------------------------------------- the checker can fail
def test_find_cycles_on_synthetic_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}, "b": set()}) == [["a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    two = find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}})
    assert two == [["a", "b"], ["c", "d"]]


def test_the_walker_sees_lazy_relative_and_dynamic_imports(tmp_path):
    pkg = tmp_path / "scrutiny"
    (pkg / "attacks").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "attacks" / "__init__.py").write_text("from .base import Attack\n")
    (pkg / "attacks" / "base.py").write_text("class Attack: ...\n")
    (pkg / "types.py").write_text(
        "import importlib\n"
        "from scrutiny import errors\n"
        "def f():\n"
        "    from scrutiny.attacks.base import Attack\n"
        "    return importlib.import_module('scrutiny.attacks')\n")
    g = import_graph(pkg)
    assert g["scrutiny.types"] == {"scrutiny.errors": 2, "scrutiny.attacks.base": 4,
                                   "scrutiny.attacks": 5}
    assert g["scrutiny.attacks"] == {"scrutiny.attacks.base": 1}
    layers = (("errors",), ("types",), ("scrutiny", "attacks"))
    bad = upward_imports(g, layers)
    assert len(bad) == 2 and all("scrutiny.types:" in b and "must not import" in b for b in bad)


def test_siblings_in_one_layer_may_not_import_each_other():
    g = {"scrutiny.attacks.whitebox.feature": {"scrutiny.explain.base": 11},
         "scrutiny.explain.base": {"scrutiny.models.hooks": 12}, "scrutiny.models.hooks": {}}
    bad = upward_imports(g)
    assert bad == ["scrutiny.attacks.whitebox.feature:11 imports scrutiny.explain.base: attacks and "
                   "explain share layer 6 and are independent"]
