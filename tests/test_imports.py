"""The layers import downwards only: no import cycle among minibert's modules, lazy imports
(inside functions) included, and no module imports a private name of another layer.

The graph is read from the source with ``ast``: one edge per import statement, wherever it
stands. ``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is one,
else to ``pkg/__init__.py``. The import of a package's ``__init__`` that Python performs
before any of its submodules is not an edge (otherwise every module would sit in a cycle
with ``minibert/__init__.py``, which imports the public names of the whole library).
"""
import ast
import pathlib
import subprocess
import sys

import minibert
from tests.helpers import import_graph, minibert_modules

REPO = pathlib.Path(minibert.__file__).resolve().parent.parent    # the checkout's root


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan), or self-loops."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _, _ in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(t == v for t, _, _ in graph[v]):
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_layers():
    g = import_graph()
    assert "minibert.kernels" in g and "minibert.ops.layernorm" in g and "minibert.model" in g
    assert any(t == "minibert.ops.linear" for t, _, _ in g["minibert.model"])


def test_no_import_cycle():
    g = import_graph()
    cycles = _cycles(g)
    detail = [[(a, b, line) for a in c for b, _, line in g[a] if b in c] for c in cycles]
    assert not cycles, f"import cycles (module, imports, line): {detail}"


def test_no_private_name_crosses_a_layer():
    """A module may import an underscore name only from its own package: ops do not reach
    into kernels' privates or the reverse, nor anything into checkpoint's."""
    bad = []
    for name, edges in import_graph().items():
        for target, names, line in edges:
            same_package = target.rpartition(".")[0] == name.rpartition(".")[0] or \
                target == name.rpartition(".")[0]
            for n in names:
                if n.startswith("_") and not n.startswith("__") and not same_package:
                    bad.append(f"{name}:{line} imports {n} from {target}")
    assert not bad, bad


def test_importing_minibert_loads_nothing_from_the_ladder_folder():
    """Every module of minibert imported, no module in ``sys.modules`` comes from the study
    ladder (``kernels/`` at the repository root), whatever name it was loaded under."""
    code = ("import importlib, pathlib, sys\n"
            f"for name in {sorted(n for n in minibert_modules() if not n.endswith('__main__'))!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        pass\n"
            f"ladder = pathlib.Path({str(REPO / 'kernels')!r})\n"
            "files = [pathlib.Path(getattr(m, '__file__', None) or '.').resolve()\n"
            "         for m in list(sys.modules.values())]\n"
            "print(len(sys.modules), [str(f) for f in files if ladder in f.parents])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    count, found = r.stdout.split(" ", 1)
    assert int(count) > 100 and found.strip() == "[]", r.stdout


def test_ops_import_nothing_from_kernels_at_module_level():
    modules = minibert_modules()
    bad = []
    for name, path in modules.items():
        if not name.startswith("minibert.ops"):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:     # module level only
            if isinstance(node, ast.ImportFrom) and node.module and "kernels" in node.module:
                bad.append(f"{name}:{node.lineno}")
    assert not bad, bad
