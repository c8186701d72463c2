"""Atomic writes: a failed write leaves the old content and no temporary file or directory."""
import os
import pathlib

import pytest

from minibert.io import atomic_directory, atomic_write, atomic_write_text


def _write_bytes(data):
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
    return write


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, _write_bytes(b"one"))
    assert path.read_bytes() == b"one"
    atomic_write(str(path), _write_bytes(b"two"))
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_that_raises_keeps_old_file(tmp_path, error):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new")
        raise error
    with pytest.raises(type(error)):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]              # no temporary file left


def test_atomic_write_that_raises_creates_nothing(tmp_path):
    def fail(tmp):
        raise ValueError("bad")
    with pytest.raises(ValueError):
        atomic_write(tmp_path / "new.bin", fail)
    assert os.listdir(tmp_path) == []


def test_atomic_write_text_keeps_line_ends(tmp_path):
    path = tmp_path / "vocab.txt"
    atomic_write_text(path, "a\nb\r\nc\n")
    assert path.read_bytes() == b"a\nb\r\nc\n"
    atomic_write_text(path, "é\n")
    assert path.read_bytes() == "é\n".encode()


def test_atomic_directory_creates(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        assert os.path.isdir(tmp) and os.path.dirname(tmp) == str(tmp_path)
        assert os.path.basename(tmp).startswith(".")       # hidden while it is being written
        assert not target.exists()
        pathlib.Path(tmp, "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert os.listdir(tmp_path) == ["ckpt"]


def test_atomic_directory_replaces_existing(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        pathlib.Path(tmp, "new.txt").write_text("new")
    assert os.listdir(target) == ["new.txt"]
    assert os.listdir(tmp_path) == ["ckpt"]                # the old one moved aside is gone


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_directory_that_raises_keeps_old(tmp_path, existing):
    target = tmp_path / "ckpt"
    if existing:
        target.mkdir()
        (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            pathlib.Path(tmp, "partial").write_text("x")
            raise KeyboardInterrupt
    if existing:
        assert os.listdir(target) == ["old.txt"]
        assert (target / "old.txt").read_text() == "old"
        assert os.listdir(tmp_path) == ["ckpt"]
    else:
        assert os.listdir(tmp_path) == []                  # no temporary directory left


def _write_with_failing_rename(tmp_path, monkeypatch, message, fails):
    """Write ``new.txt`` through ``atomic_directory`` over ``tmp_path/ckpt`` (which holds
    ``old.txt``) while ``os.rename(src, dst)`` raises ``OSError(message)`` wherever
    ``fails(src, dst, target)``; check that the error comes out, and return the target."""
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if fails(str(src), str(dst), str(target)):
            raise OSError(message)
        return real_rename(src, dst)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match=message):
        with atomic_directory(target) as tmp:
            pathlib.Path(tmp, "new.txt").write_text("new")
    return target


def test_atomic_directory_failed_swap_restores_old(tmp_path, monkeypatch):
    """If moving the new directory in fails after the old one was moved aside, the old one
    goes back under its name."""
    target = _write_with_failing_rename(
        tmp_path, monkeypatch, "rename failed",
        fails=lambda src, dst, target: os.path.basename(src).startswith(".tmp-ckpt-") and dst == target)
    assert os.listdir(target) == ["old.txt"]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_atomic_directory_failed_swap_and_failed_restore_keep_the_old_files(tmp_path, monkeypatch):
    """If the new directory cannot move in and the old one cannot move back either, the old
    files must survive (under the hidden name next to ``path``): nothing deletes them."""
    # both the swap and the restore fail
    _write_with_failing_rename(tmp_path, monkeypatch, "rename failed",
                               fails=lambda src, dst, target: dst == target)
    kept = [p for p in tmp_path.rglob("old.txt")]
    assert len(kept) == 1 and kept[0].read_text() == "old", list(tmp_path.rglob("*"))


def test_atomic_directory_failed_move_aside_leaves_nothing(tmp_path, monkeypatch):
    target = _write_with_failing_rename(tmp_path, monkeypatch, "cannot move aside",
                                        fails=lambda src, dst, target: src == target)
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(target) == ["old.txt"]


def test_written_files_and_directories_get_the_ordinary_permissions(tmp_path):
    """Renamed into place, a file has the mode ``open`` would give it (0o666 less the umask),
    a directory the mode of ``mkdir`` (0o777 less the umask), not the private modes of their
    temporaries."""
    import stat
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_directory(tmp_path / "d") as tmp:
            atomic_write_text(os.path.join(tmp, "g.txt"), "y")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "g.txt").st_mode) == 0o644


def test_json_lines_end_at_newline_only():
    """U+2028 and U+0085 inside a JSON string (written raw with ensure_ascii=False) do not
    end a line, as str.splitlines would make them; "\\r\\n" and blank lines are handled."""
    import json

    from minibert.io import json_lines
    a, b = {"t": "one\u2028two\x85three"}, {"t": "four"}
    text = json.dumps(a, ensure_ascii=False) + "\r\n\n" + json.dumps(b, ensure_ascii=False) + "\n"
    got = list(json_lines(text))
    assert [n for n, _ in got] == [1, 3]
    assert [json.loads(line) for _, line in got] == [a, b]
