"""Files written whole, with a plain file's mode, and the temporary files of killed runs swept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamadoc.files import STALE_AFTER_S, sweep_temp, write_atomic


def test_write_atomic_never_leaves_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "doc.json"
    write_atomic(target, "finished\n")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "half")
    assert target.read_text() == "finished\n"  # the finished file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.json"]  # no temp left


def test_files_get_the_mode_open_would_give_them(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; a result file must be as readable as any other (0666 & ~umask)."""
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from pathlib import Path; "
            "from llamadoc.files import write_atomic; write_atomic(Path(sys.argv[1]), 'x')")
    for umask, mode in (("022", 0o644), ("002", 0o664), ("077", 0o600)):
        target = tmp_path / f"doc-{umask}.json"
        subprocess.run([sys.executable, "-c", code, str(target), umask], check=True)
        assert target.stat().st_mode & 0o777 == mode


def test_sweep_removes_what_dead_processes_and_old_runs_left(tmp_path: Path) -> None:
    # A child writes a temporary file and dies before renaming it, as kill -9 would leave it.
    code = ("import os, sys, tempfile; from llamadoc import files; "
            "tempfile.mkstemp(prefix=f'.a.json.{files._HOST}-{os.getpid()}.', suffix='.part', dir=sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    (sub := tmp_path / "sub").mkdir()
    old_style = sub / ".b.json.k2j3h4g5.part"  # an older version's name: only its age tells
    old_style.write_text("{")
    fresh_old_style = sub / ".c.json.a1b2c3d4.part"
    fresh_old_style.write_text("{")
    os.utime(old_style, (time.time() - STALE_AFTER_S - 60,) * 2)
    mine = tmp_path / f".d.json.{__import__('llamadoc.files').files._HOST}-{os.getpid()}.x1y2.part"
    mine.write_text("{")  # a live process's write in progress: never touched
    keep = tmp_path / "e.json"
    keep.write_text("{}")
    assert sweep_temp([tmp_path]) == 2
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == [mine.name, "e.json", "sub/.c.json.a1b2c3d4.part"]
