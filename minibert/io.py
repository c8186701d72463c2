"""Atomic writes: a file or a directory appears complete under its name, or not at all; and
``read_utf8_text``, the one reader of the UTF-8 input files (corpora, labeled data), whose
error names the file, the byte and its line.

Every writer in minibert (Hugging Face checkpoints, vocabularies and tokenizer configs, the
trainer's checkpoint directories, its ``latest`` pointer and plots) goes through these
functions. Each writes under a hidden temporary name in the destination's own directory and
then renames it into place: a rename within one file system is atomic, so a reader sees the
old content or the new one, never a half-written mix.

What a crash mid-write leaves behind:

* an exception raised while writing (a full disk, a bad value, Ctrl-C): the destination as
  it was before, and no temporary file or directory (they are removed before re-raising);
* a process killed outright (SIGKILL, a power cut): the destination as it was before, and
  possibly a hidden temporary (``.tmp-*``) next to it, which nothing reads.

Durability across a power cut (fsync) is not attempted: the guarantee is about processes
that die, not about disks that lose their cache.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

TEMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _permissions_of_a_new(kind: str) -> int:
    """The mode ``open``/``mkdir`` would give a new file or directory: 0o666 or 0o777 less the
    process's umask. ``mkstemp``/``mkdtemp`` make their temporaries private (0o600, 0o700);
    what is renamed into place gets the ordinary mode back, so a run's files can be read by
    whoever could read a file the user wrote by hand."""
    return (0o666 if kind == "file" else 0o777) & ~_umask()


def atomic_write(path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` to write a temporary file in ``path``'s directory, then rename it
    over ``path``.

    ``write`` receives the temporary file's path (the file exists, empty) and writes the whole
    content there. If it raises, the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _permissions_of_a_new("file"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8, line ends as given: ``"\\n"`` stays ``"\\n"`` on every platform)
    to ``path`` with ``atomic_write``."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    atomic_write(path, write)


def read_utf8_text(file: str, what: str) -> str:
    """The text of ``file`` decoded as UTF-8 (a leading byte-order mark dropped), with its
    line ends as they are. An undecodable byte raises ValueError naming ``what`` (such as
    "corpus file"), the file, the byte and the line it is on."""
    with open(file, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{what} {file!r} is not UTF-8 text: undecodable byte "
                         f"{raw[e.start:e.start + 1]!r} at line {line}, expected UTF-8") from None


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each non-blank line of a JSON-lines text, numbered from 1.
    A line ends at ``"\n"`` only (a ``"\r"`` before it is dropped): a JSON string may hold
    U+2028, U+0085 and the other characters at which ``str.splitlines`` would also cut."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line.rstrip("\r")


@contextlib.contextmanager
def atomic_directory(path) -> Iterator[str]:
    """Build a directory under a temporary name and rename it to ``path`` when done::

        with atomic_directory("out/checkpoint-0000100") as tmp:
            write_files_into(tmp)

    The body fills ``tmp``, a new hidden directory next to ``path``. When it finishes, ``tmp``
    becomes ``path``; an existing ``path`` is replaced, the old one moved aside first and
    removed only once the new one is in place. If the body raises, ``tmp`` is removed and
    ``path`` is untouched.

    A process killed outright leaves ``path`` complete (old or new) and at worst a hidden
    ``.tmp-*`` directory next to it, with one exception: killed between the two renames of a
    replacement, ``path`` is missing and the old directory survives under its hidden name.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f"{TEMP_PREFIX}{name}-")
    try:
        yield tmp
        os.chmod(tmp, _permissions_of_a_new("directory"))
        if os.path.exists(path):
            _replace_directory(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_directory(new: str, path: str) -> None:
    """Rename ``new`` over the existing directory ``path`` (a directory cannot be renamed
    over a non-empty one): move ``path`` aside into a hidden directory, move ``new`` in, then
    delete the old one. If the second rename fails, the old directory goes back; the old one
    is deleted only once the new one is in place, so no failure loses both."""
    parent, name = os.path.split(path)
    aside_dir = tempfile.mkdtemp(dir=parent, prefix=f"{TEMP_PREFIX}{name}-old-")
    aside = os.path.join(aside_dir, name)
    try:
        os.rename(path, aside)
    except BaseException:
        os.rmdir(aside_dir)
        raise
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(aside, path)      # if this fails too, the old directory stays in aside_dir
        os.rmdir(aside_dir)
        raise
    shutil.rmtree(aside_dir, ignore_errors=True)
