"""The documented functions of the standard library: the raw material of the built-in tasks.

Every built-in fine-tuning task (one per family) is made from real text that every Python
installation has: the functions and methods of the standard library's sources, read with
``ast`` (nothing is imported), with their signatures and docstrings. Labels are derived
mechanically from that text, so each one can be checked by reading the source.

``split_by_group`` keeps every module (or package) wholly on one side of a train/test
split, so held-out examples never share a module with training examples.
"""
from __future__ import annotations

import ast
import functools
import os
from dataclasses import dataclass

import numpy as np

from ..corpora import docstring_paragraphs, stdlib_root, stdlib_source_files


@dataclass(frozen=True)
class FunctionDoc:
    """One documented function or method of a standard-library source file.

    package: the top-level package or module (``"email"``, ``"json"``, ``"textwrap"``).
    module: the dotted module path (``"email.utils"``).
    name: the function's name; qualname: with its class (``"Message.get_all"``).
    params: the parameter names in order, ``self``/``cls`` of methods left out.
    defaults: ``{parameter: default value's source text}`` for those that have one.
    signature: ``name(params...)`` as written (``ast.unparse`` of the arguments).
    doc: the cleaned docstring (``inspect.cleandoc``); paragraphs: its prose paragraphs.
    """
    package: str
    module: str
    name: str
    qualname: str
    params: tuple
    defaults: tuple                     # ((parameter, source text), ...), hashable
    signature: str
    doc: str
    paragraphs: tuple

    @property
    def default_of(self) -> dict:
        return dict(self.defaults)


def _params(args: ast.arguments, is_method: bool):
    names = [a.arg for a in args.posonlyargs + args.args]
    if is_method and names and names[0] in ("self", "cls"):
        names = names[1:]
    pos = args.posonlyargs + args.args
    defaults = {a.arg: ast.unparse(d) for a, d in zip(pos[len(pos) - len(args.defaults):],
                                                      args.defaults)}
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        if d is not None:
            defaults[a.arg] = ast.unparse(d)
    names += [a.arg for a in args.kwonlyargs]
    return tuple(names), tuple((n, defaults[n]) for n in names if n in defaults)


@functools.cache
def _file_functions(file: str, root: str) -> tuple:
    try:
        with open(file, "rb") as fh:
            tree = ast.parse(fh.read(), filename=file)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    rel = os.path.relpath(file, root)[:-3].replace(os.sep, ".")
    module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
    package = module.split(".")[0]
    out = []

    def visit(body, cls):
        for node in body:
            if isinstance(node, ast.ClassDef) and cls is None:
                visit(node.body, node.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if not doc or node.name.startswith("_"):
                    continue
                params, defaults = _params(node.args, cls is not None)
                out.append(FunctionDoc(package, module, node.name,
                                       node.name if cls is None else f"{cls}.{node.name}",
                                       params, defaults,
                                       f"{node.name}({ast.unparse(node.args)})", doc,
                                       tuple(docstring_paragraphs(doc))))

    visit(tree.body, None)
    return tuple(out)


def stdlib_functions(packages=None, root: str | None = None) -> list:
    """Every public (no leading underscore), documented module-level function and method of
    the standard library's sources (``packages`` restricts to those top-level names), as
    ``FunctionDoc``, sorted by module then source order. Nested functions are left out."""
    root = root or stdlib_root()
    return [f for file in stdlib_source_files(root, packages=packages)
            for f in _file_functions(file, root)]


def split_by_group(items, group, test_fraction: float = 0.2, seed: int = 0):
    """``(train, test)`` lists of ``items`` where every group (``group(item)``, e.g. the
    module) is wholly on one side: the groups are shuffled with
    ``np.random.default_rng(seed)`` and the first ones go to test until it holds at least
    ``test_fraction`` of the items. Each side keeps the items' order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} is invalid, expected 0 < test_fraction < 1")
    items = list(items)
    names = sorted({group(x) for x in items})
    if len(names) < 2:
        raise ValueError(f"the items fall in {len(names)} group(s), expected at least 2 to split")
    order = np.random.default_rng(seed).permutation(len(names))
    test_groups, n_test = set(), 0
    for i in order:
        if n_test >= test_fraction * len(items) or len(test_groups) == len(names) - 1:
            break
        test_groups.add(names[i])
        n_test += sum(group(x) == names[i] for x in items)
    return ([x for x in items if group(x) not in test_groups],
            [x for x in items if group(x) in test_groups])
