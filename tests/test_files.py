"""The crash-safe writes every command shares (sigrl.files): an error mid-write leaves the target as it was."""

import pytest

from sigrl.files import atomic_file, staged_files, staged_folder, write_atomic


class Crash(Exception):
    pass


def test_an_atomic_file_replaces_the_old_one_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "result.json"
    write_atomic(path, "old")
    with pytest.raises(Crash), atomic_file(path) as handle:
        handle.write(b"half of the new")
        raise Crash
    assert path.read_text() == "old"
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]  # no temporary file left


def test_staged_files_move_together_or_not_at_all(tmp_path):
    (tmp_path / "a.onnx").write_text("old a")
    (tmp_path / "keep.txt").write_text("other")
    with pytest.raises(Crash), staged_files(tmp_path) as staging:
        (staging / "a.onnx").write_text("new a")
        raise Crash
    assert (tmp_path / "a.onnx").read_text() == "old a"
    with staged_files(tmp_path) as staging:
        (staging / "a.onnx").write_text("new a")
        (staging / "b.onnx").write_text("new b")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.onnx": "new a", "b.onnx": "new b",
                                                                   "keep.txt": "other"}


def test_a_staged_folder_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "stale").write_text("from an older build")
    with pytest.raises(Crash), staged_folder(out) as staging:
        (staging / "model").write_text("new")
        raise Crash
    assert [p.name for p in out.iterdir()] == ["stale"]
    with staged_folder(out) as staging:
        (staging / "model").write_text("new")
    assert [p.name for p in out.iterdir()] == ["model"]
    assert (out.stat().st_mode & 0o777) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging or old folder left
