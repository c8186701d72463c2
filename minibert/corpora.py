"""Corpora: documents of sentences, read from text files or built from the docstrings of
the Python standard library, so that minibert can pretrain and fine-tune with no download.

A corpus is a list of *documents*, each a list of *sentences* (strings).

* ``read_corpus`` reads UTF-8 text files with one sentence per line and a blank line
  between documents (a file, or every ``*.txt`` under a directory).
* ``stdlib_documents`` is the built-in corpus: one document per standard-library module,
  the prose sentences of its docstrings, read with ``ast`` (nothing is imported).
  ``stdlib_source_files``, ``file_docstrings`` and ``docstring_paragraphs`` are its parts,
  also used by the built-in classification task (``finetune_data.stdlib_classification``).
* ``split_sentences`` cuts running text into sentences with a small, predictable rule.
"""
from __future__ import annotations

import ast
import functools
import gc
import os
import re
import sysconfig
from collections.abc import Iterable

from .io import read_utf8_text

# ----------------------------------------------------------------------------- sentences

# Words after which a period does not end a sentence (compared in lower case).
ABBREVIATIONS = frozenset({
    "e.g.", "i.e.", "etc.", "vs.", "cf.", "viz.", "al.", "approx.", "resp.",
    "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.",
})
_QUOTES = "\"'\u201c\u201d\u2018\u2019"
# A run of . ! ? (an ellipsis counts as one), then closing quotes/brackets, then space or the end.
_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?= |$)")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences with a small, predictable rule.

    Whitespace (newlines included) is first collapsed to single spaces. A sentence ends at a
    run of ``.``, ``!`` or ``?`` (optionally followed by closing quotes or brackets) that is
    followed by a space and then an uppercase letter, a digit or a quote, or by the end of
    the text. A period does not end a sentence after a common abbreviation (``e.g.``,
    ``i.e.``, ``etc.``, ``Mr.``, ``Dr.``, ...: see ``ABBREVIATIONS``) or after a single
    uppercase initial (``J. Smith``). A lowercase word after a period ("see foo. bar")
    does not start a new sentence. Empty pieces are dropped.
    """
    if not isinstance(text, str):
        raise TypeError(f"text has type {type(text).__name__}, expected str")
    text = " ".join(text.split())
    sentences, start = [], 0
    for m in _END.finditer(text):
        end = m.end()
        if end < len(text):
            nxt = text[end + 1]                      # the character after the single space
            if not (nxt.isupper() or nxt.isdigit() or nxt in _QUOTES):
                continue
        if m.group().rstrip(_QUOTES + ")]") == ".":
            word = text[text.rfind(" ", 0, m.start()) + 1:end].strip(_QUOTES + "()[]")
            if word.lower() in ABBREVIATIONS or (len(word) == 2 and word[0].isupper()):
                continue
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = end
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


# ----------------------------------------------------------------------------- corpus files

def _corpus_files(path: str) -> list[str]:
    """The ``*.txt`` files under a directory, recursively, sorted by relative path; hidden
    files and directories (names starting with ".") are skipped."""
    found = []
    for d, dirs, files in os.walk(path):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [os.path.join(d, f) for f in files if f.endswith(".txt") and not f.startswith(".")]
    return sorted(found, key=lambda f: os.path.relpath(f, path))


def _read_documents(file: str) -> list[list[str]]:
    documents, current = [], []
    # split("\n"), not splitlines: \x0c, \x85 and \u2028 are not line ends here
    for line in read_utf8_text(file, "corpus file").split("\n"):
        line = " ".join(line.split())
        if line:
            current.append(line)
        elif current:                           # a blank line closes the document
            documents.append(current)
            current = []
    if current:                                 # a document never spans two files
        documents.append(current)
    return documents


def read_corpus(path) -> list[list[str]]:
    """Read a corpus: documents, each a list of sentences.

    ``path`` is a UTF-8 text file with one sentence per line and one or more blank lines
    between documents, or a directory: then every ``*.txt`` file under it (recursively,
    sorted by relative path, hidden names skipped) is read in turn. Files without the
    ``.txt`` extension are ignored, so a directory may hold READMEs, archives or vocabularies
    next to the corpus. Whitespace inside a line is collapsed; a byte-order mark is allowed.

    Raises ValueError (naming the path) when the path does not exist, a directory holds no
    ``*.txt`` file, a file is not UTF-8, or no sentence is found.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = _corpus_files(path)
        if not files:
            raise ValueError(f"corpus directory {path!r} has no *.txt file, expected text files "
                             "with one sentence per line")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ValueError(f"corpus path {path!r} does not exist, expected a text file or a directory")
    documents = []
    for f in files:
        documents += _read_documents(f)
    if not documents:
        raise ValueError(f"corpus {path!r} has no sentences, expected one sentence per line "
                         "and blank lines between documents")
    return documents


def check_documents(documents) -> list:
    """``documents`` as a list, after checking that it is a corpus: an iterable of documents,
    each a list (or tuple) of str. Raises TypeError naming the first bad entry."""
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
        raise TypeError(f"documents has type {type(documents).__name__}, expected a list of "
                        "documents, each a list of sentence strings")
    docs = list(documents)
    for d, doc in enumerate(docs):
        if isinstance(doc, (str, bytes)) or not isinstance(doc, (list, tuple)):
            raise TypeError(f"documents[{d}] has type {type(doc).__name__}, expected a list of "
                            "sentence strings")
        for s, sentence in enumerate(doc):
            if not isinstance(sentence, str):
                raise TypeError(f"documents[{d}][{s}] has type {type(sentence).__name__}, "
                                "expected str")
    return docs


# ----------------------------------------------------------------------------- stdlib corpus

# Directories of the standard library that hold no docstrings worth reading: tests and their
# data, installed third-party packages, compiled extensions, build files, the generated codec
# tables of encodings/ and the generated help topics of pydoc_data/.
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__",
                              "lib-dynload", "encodings", "pydoc_data"})
_DOC_KINDS = {ast.Module: "module", ast.ClassDef: "class", ast.FunctionDef: "function",
              ast.AsyncFunctionDef: "function"}
# Statements that hold statement lists (where a class or def may sit), and those lists.
_BLOCKS = frozenset([ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.For,
                     ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.ExceptHandler]
                    + [getattr(ast, n) for n in ("TryStar", "Match", "match_case") if hasattr(ast, n)])
_BODY_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`([^`]*)`")    # :func:`name`, :py:class:`~a.B`
_REF = re.compile(r"`([^`<]*?)\s*(?:<[^>]*>)?`_{1,2}")       # `text <target>`_
_LITERAL = re.compile(r"``([^`]*)``")                       # ``code``
_RULE = re.compile(r"[-=~^\"'`#*+_.:|\s]+")                 # section underlines, table borders


def stdlib_root() -> str:
    """The directory of the standard library's Python sources."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_source_files(root: str | None = None, packages=None) -> list[str]:
    """The ``*.py`` files of the standard library, sorted by path relative to ``root``.

    Skips the directories in ``STDLIB_SKIP_DIRS``, ``config-*`` build directories and hidden
    ones. ``packages`` (names of top-level packages, e.g. ``["email"]``) restricts the list.
    """
    root = root or stdlib_root()
    if not os.path.isdir(root):
        raise ValueError(f"standard library directory {root!r} does not exist")
    tops = None if packages is None else {os.path.join(root, p) for p in packages}
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in STDLIB_SKIP_DIRS and not x.startswith((".", "config-"))
                   and (tops is None or d != root or os.path.join(d, x) in tops)]
        if tops is not None and d == root:
            continue                              # top-level modules are not packages
        found += [os.path.join(d, f) for f in files if f.endswith(".py")]
    return sorted(found, key=lambda f: os.path.relpath(f, root))


@functools.cache
def file_docstrings(file: str) -> tuple:
    """``(kind, name, docstring)`` for the module, classes, functions and methods of a Python
    source file, in source order, each docstring cleaned by ``inspect.cleandoc``; ``kind`` is
    ``"module"``, ``"class"`` or ``"function"``. Read with ``ast`` (the file is never
    imported); a file that cannot be read, decoded or parsed gives ``()``. Definitions inside
    ``if``/``try``/``with``/... blocks count; those nested inside a function body (closures,
    local helpers) do not: they are not part of a module's documented interface.

    The result is kept in memory (not on disk) for the life of the process, so the corpus and
    the classification task read each file once.
    """
    try:
        with open(file, "rb") as fh:
            source = fh.read()
        # Parsing allocates a million small nodes; the cyclic collector would walk the heap
        # again and again meanwhile, for nothing (an AST has no cycles, refcounts free it).
        enabled = gc.isenabled()
        gc.disable()
        try:
            tree = ast.parse(source, filename=file)
        finally:
            if enabled:
                gc.enable()
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    out = []

    def visit(node):
        kind = _DOC_KINDS.get(type(node))
        if kind is not None:
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append((kind, getattr(node, "name", ""), doc))
            if kind == "function":
                return                         # helpers nested in a function are not API
        for name in _BODY_FIELDS:
            for child in getattr(node, name, ()):
                if type(child) in _BLOCKS:
                    visit(child)

    visit(tree)
    return tuple(out)


def _inline_markup(text: str) -> str:
    """reST inline markup to plain text: roles, references and literals keep their text."""
    text = _ROLE.sub(lambda m: m.group(1).split("<")[0].strip().lstrip("~!"), text)
    text = _REF.sub(r"\1", text)
    return _LITERAL.sub(r"\1", text)


def docstring_paragraphs(doc: str) -> list[str]:
    """The prose paragraphs of a cleaned docstring, each joined into one line.

    Dropped: doctest examples (a ``>>>`` line and everything after it up to the next blank
    line, i.e. the source, its ``...`` continuations and its output); reST directives and
    comments (a ``..`` line and the block indented under it); literal blocks (the indented
    block after a paragraph ending in ``::``, which itself keeps its text with one colon);
    section underlines and table borders (lines of punctuation only, the title line just
    above an underline with them) and table rows (lines starting with ``|``). Inline markup
    keeps its text (``:func:`len```, ````x````, ```text <url>`_`` -> ``len``, ``x``, ``text``).
    """
    paragraphs, current = [], []
    skip_deeper_than = None        # drop the block indented more than this column
    in_doctest = False

    def flush():
        if current:
            paragraphs.append(_inline_markup(" ".join(current)))
            current.clear()

    for line in doc.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if in_doctest:
            if stripped:
                continue
            in_doctest = False
        if not stripped:
            flush()
        elif stripped.startswith(">>>"):
            flush()
            in_doctest = True
        elif stripped.startswith(".."):
            flush()
            skip_deeper_than = indent
        elif _RULE.fullmatch(stripped):
            if len(current) == 1:              # an underlined title: not a sentence
                current.clear()
            flush()
        elif stripped.startswith("|"):
            continue
        elif stripped.endswith("::"):
            text = stripped[:-2].rstrip()
            # "Example::" reads "Example:", and a lone "::" (or "text ::") reads as nothing
            current.append(text + ":" if text and not stripped[:-2].endswith(" ") else text)
            flush()
            skip_deeper_than = indent
        else:
            current.append(stripped)
    flush()
    return [p for p in (" ".join(p.split()) for p in paragraphs) if p]


def docstring_sentences(doc: str) -> list[str]:
    """The sentences of a cleaned docstring: its prose paragraphs split by
    ``split_sentences``; pieces without a letter (stray numbers, symbols) are dropped."""
    return [s for p in docstring_paragraphs(doc) for s in split_sentences(p)
            if any(c.isalpha() for c in s)]


def stdlib_documents(max_files: int | None = None, root: str | None = None,
                     min_sentences: int = 2) -> list[list[str]]:
    """The built-in pretraining corpus: the docstrings of the Python standard library.

    One document per module file (``stdlib_source_files``: sorted, tests and generated data
    skipped), made of the module's docstring and then its class, function and method
    docstrings in source order (``file_docstrings``), each reduced to prose sentences
    (``docstring_sentences``). Documents with fewer than ``min_sentences`` sentences are
    dropped. Nothing is imported; files that fail to decode or parse are skipped.
    ``max_files`` reads only the first files of the sorted list (a quick, smaller corpus).

    Deterministic for a given Python installation (its size is in docs/data.md). The
    parsed docstrings stay in memory (``file_docstrings``), so a second call parses nothing.
    """
    files = stdlib_source_files(root)
    if max_files is not None:
        if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
            raise ValueError(f"max_files={max_files!r} is invalid, expected a positive integer or None")
        files = files[:max_files]
    documents = []
    for f in files:
        doc = [s for _, _, d in file_docstrings(f) for s in docstring_sentences(d)]
        if len(doc) >= min_sentences:
            documents.append(doc)
    if not documents:
        raise ValueError(f"the standard library at {root or stdlib_root()!r} yielded no document "
                         f"of at least {min_sentences} sentences from {len(files)} files")
    return documents
