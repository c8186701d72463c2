"""Numba's on-disk cache of minibert's compiled functions, keyed on every file they use.

Numba stores a ``cache=True`` function's machine code with a stamp of the file that defines
it, and reuses the code while that file is unchanged. But a compiled function also carries
the code of the compiled functions it calls, which LLVM inlines: the attention row passes
of ``kernels/attention_cpu.py`` contain ``kernels/_blocks.py``'s exp. When ``_blocks.py``
alone changes (an edit, a ``git pull``, an upgrade: the cache files outlive all three),
the cached row passes would keep the old exp.

So every file of the minibert package is stamped with the files it imports from minibert,
followed to the end (``dependencies``): a change to ``_blocks.py`` recompiles, once, every
function whose file imports it, directly or through another module. Other packages'
caches are untouched. The stamp is added by locator classes (Numba's name for what finds
a function's cache directory and stamps its source), put in front of Numba's own by
``install()`` when this module is imported. Every kernel module with ``cache=True``
functions imports it before its first ``@njit``; ``import minibert`` does not import it,
since that does not load Numba (half a second). The locators go into Numba's class list
``CacheImpl._locator_classes``, which is not a public API: where it is missing,
``INSTALLED`` is False and Numba's per-file stamp applies (``tests/test_numba_cache.py``
checks that it installs with the Numba installed here).
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

#: the minibert package directory; the files under it are the ones stamped
PACKAGE = Path(__file__).resolve().parent


def _module_file(dotted: str) -> Path | None:
    """The file of module ``minibert.x.y`` (``x/y.py`` or ``x/y/__init__.py``), or None."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports(path: Path) -> frozenset[Path]:
    """The minibert files that ``path`` imports (``import minibert.x``, ``from .x import
    y``, where y may itself be a module), one step."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts   # its dotted name
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                              # relative: from the module's package
                base = ".".join(package[:len(package) - node.level])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(f for f in map(_module_file, names) if f is not None)
    return frozenset(found)


@functools.cache
def dependencies(path: Path) -> tuple[Path, ...]:
    """``path`` and every minibert file it imports, directly or not, sorted."""
    seen, todo = set(), [Path(path).resolve()]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(_imports(f) - seen)
    return tuple(sorted(seen))


def digest(paths) -> str:
    """sha256 of the files' names (relative to the package) and contents, in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(Path(p).relative_to(PACKAGE)).encode() + b"\0")
        h.update(Path(p).read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def _dependency_digest(path: Path) -> str:
    """``digest(dependencies(path))``, once per process (Numba asks for every function)."""
    return digest(dependencies(path))


class _StampDependencies:
    """Mixed in front of a Numba locator: for files of minibert, the stamp is Numba's own
    (the file) and the digest of the file's dependencies; other files are left to Numba's
    locators (``from_function`` returns None)."""

    def get_source_stamp(self):
        return super().get_source_stamp(), _dependency_digest(Path(self._py_file))

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            Path(py_file).resolve().relative_to(PACKAGE)
        except ValueError:
            return None
        return super().from_function(py_func, py_file)


def install() -> bool:
    """Put the stamping locators in front of Numba's (once); False where this Numba has no
    ``CacheImpl._locator_classes``."""
    from numba.core import caching
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    classes = getattr(impl, "_locator_classes", None)
    if impl is None or mixin is None or not isinstance(classes, list):
        return False
    if any(issubclass(c, _StampDependencies) for c in classes):
        return True
    ours = [type(f"Minibert{c.__name__}", (_StampDependencies, c), {})
            for c in classes if issubclass(c, mixin)]
    impl._locator_classes = ours + classes
    return True


#: whether the stamping locators are in place (installed on import)
INSTALLED = install()
