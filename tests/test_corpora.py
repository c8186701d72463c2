"""Corpora: sentence splitting, the corpus file readers, the standard-library docstring corpus."""
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibert.corpora import (
    check_documents,
    docstring_paragraphs,
    docstring_sentences,
    file_docstrings,
    read_corpus,
    split_sentences,
    stdlib_documents,
)

DATA = os.path.join(os.path.dirname(__file__), "data")


# ----------------------------------------------------------------------------- sentences

@pytest.mark.parametrize("text, expected", [
    ("Hello world. This is a test.", ["Hello world.", "This is a test."]),
    ("Use e.g. Python here. It works.", ["Use e.g. Python here.", "It works."]),
    ("Mr. Smith went home. Dr. Who did not.", ["Mr. Smith went home.", "Dr. Who did not."]),
    ("Lists, i.e. Arrays, etc. Are fine.", ["Lists, i.e. Arrays, etc. Are fine."]),
    ("Version 3.11 is out. 42 is the answer!", ["Version 3.11 is out.", "42 is the answer!"]),
    ('Is it? "Yes," he said.', ["Is it?", '"Yes," he said.']),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("Call foo(). bar is lowercase. Done", ["Call foo(). bar is lowercase.", "Done"]),
    ("Wait... What?! Fine.", ["Wait...", "What?!", "Fine."]),
    ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
    ("  spread\n over\tlines.\n\nNext  one ", ["spread over lines.", "Next one"]),
    ("(See the note.) Then go.", ["(See the note.)", "Then go."]),
    ("", []),
    ("   \n ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_rejects_non_str():
    with pytest.raises(TypeError, match="text has type bytes"):
        split_sentences(b"A. B.")


@given(st.lists(st.text(alphabet="abAB .!?\n\"", max_size=12), max_size=6))
def test_split_sentences_keeps_every_word(parts):
    """Splitting only cuts between words: joining the sentences gives the collapsed text."""
    text = " ".join(parts)
    sentences = split_sentences(text)
    assert " ".join(sentences) == " ".join(text.split())
    assert all(s and s == s.strip() for s in sentences)


# ----------------------------------------------------------------------------- corpus files

def test_read_corpus_file():
    docs = read_corpus(os.path.join(DATA, "tiny_corpus.txt"))
    assert [len(d) for d in docs] == [3, 2, 1, 3]
    assert docs[0][0] == "The cat sat on the mat."
    assert docs[3][-1] == "Every document ends with a blank line."


def test_read_corpus_directory_sorted_recursive(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "two.txt").write_text("Second file.\nStill second.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("\n\nFirst  doc,\tfirst line.\n\n\nSecond doc.\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("Not a corpus file.\n", encoding="utf-8")
    (tmp_path / "README").write_text("Not read either.\n", encoding="utf-8")
    (tmp_path / ".hidden" / "x.txt").write_text("Hidden.\n", encoding="utf-8")
    (tmp_path / "c.txt").write_bytes("\ufeffWith a BOM.\r\nAnd CRLF.\r\n".encode("utf-8"))
    assert read_corpus(tmp_path) == [["First doc, first line."], ["Second doc."],
                                     ["Second file.", "Still second."],
                                     ["With a BOM.", "And CRLF."]]


def test_read_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"has no \*\.txt file"):
        read_corpus(tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="blank.txt.*has no sentences"):
        read_corpus(blank)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Fine line.\nCaf\u00e9 au lait.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt.*not UTF-8.*line 2"):
        read_corpus(bad)
    with pytest.raises(ValueError, match=r"latin1.txt.*not UTF-8"):
        read_corpus(tmp_path)                  # the directory read fails on the same file


# ----------------------------------------------------------------------------- stdlib corpus

def test_docstring_cleaning():
    doc = "\n".join([
        "Summary line of :func:`len` and ``x``.",
        "",
        "Details follow here. See `the docs <https://python.org>`_ for more.",
        "",
        ">>> f(1)",
        "2",
        "...",
        "",
        ".. note::",
        "   A directive body.",
        "",
        "Example::",
        "",
        "    code = here()",
        "",
        "Parameters",
        "----------",
        "x : int",
        "    The value.",
        "",
        "| table | row |",
    ])
    assert docstring_paragraphs(doc) == [
        "Summary line of len and x.",
        "Details follow here. See the docs for more.",
        "Example:",
        "x : int The value.",
    ]
    assert docstring_sentences(doc) == ["Summary line of len and x.", "Details follow here.",
                                        "See the docs for more.", "Example:", "x : int The value."]


def test_stdlib_skip_rules(tmp_path):
    """A fake standard library: tests, site-packages and broken files are skipped, nested
    functions are not read, documents follow the sorted file order."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "test").mkdir()
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "zmod.py").write_text(
        '"""Module zed. It is last."""\n'
        'class C:\n    """Class doc. Second sentence."""\n'
        '    def m(self):\n        """Method doc."""\n'
        '        def inner():\n            """Nested helper, not read."""\n'
        'if True:\n    def f():\n        """Conditional def. Still read."""\n', encoding="utf-8")
    (tmp_path / "pkg" / "__init__.py").write_text('"""Package one. First in order."""\n', encoding="utf-8")
    (tmp_path / "pkg" / "test" / "test_x.py").write_text('"""Test doc. Skipped."""\n', encoding="utf-8")
    (tmp_path / "site-packages" / "third.py").write_text('"""Third party. Skipped."""\n', encoding="utf-8")
    (tmp_path / "broken.py").write_text('"""Broken. File."""\ndef (:\n', encoding="utf-8")
    (tmp_path / "short.py").write_text('"""Only one sentence."""\n', encoding="utf-8")
    docs = stdlib_documents(root=str(tmp_path))
    assert docs == [["Package one.", "First in order."],
                    ["Module zed.", "It is last.", "Class doc.", "Second sentence.", "Method doc.",
                     "Conditional def.", "Still read."]]
    assert file_docstrings(str(tmp_path / "broken.py")) == ()
    with pytest.raises(ValueError, match="yielded no document"):
        stdlib_documents(root=str(tmp_path), min_sentences=50)
    with pytest.raises(ValueError, match="max_files=0"):
        stdlib_documents(max_files=0, root=str(tmp_path))


@pytest.mark.slow
def test_stdlib_documents():
    """The built-in corpus. Lower bounds only: counts vary across Python versions (CPython
    3.11 gives about 500 documents, 20,000 sentences, 250,000 words)."""
    docs = stdlib_documents()
    n_sentences = sum(len(d) for d in docs)
    n_words = sum(len(s.split()) for d in docs for s in d)
    assert len(docs) >= 200 and n_sentences >= 5000 and n_words >= 60000
    assert all(len(d) >= 2 for d in docs)
    sentences = [s for d in docs for s in d]
    assert all(s and s == " ".join(s.split()) for s in sentences)
    assert not any(s.startswith(">>>") for s in sentences)
    assert len(set(sentences)) > 0.7 * len(sentences)
    # deterministic, and max_files reads a prefix of the same sorted file list
    assert stdlib_documents() == docs
    head = stdlib_documents(max_files=30)
    assert 0 < len(head) < len(docs) and head == docs[:len(head)]


@pytest.mark.parametrize("documents,match", [
    ("one text", r"documents has type str"),
    (5, r"documents has type int"),
    (["a sentence"], r"documents\[0\] has type str"),
    ([["ok"], ["fine", 3]], r"documents\[1\]\[1\] has type int"),
])
def test_check_documents_names_the_bad_entry(documents, match):
    with pytest.raises(TypeError, match=match):
        check_documents(documents)


def test_check_documents_returns_a_list():
    assert check_documents(iter([("a", "b"), ["c"]])) == [("a", "b"), ["c"]]
