"""Durable file primitives: atomic, synced writes; temp names; links refused; modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchd.durable import StoreError, ensure_dir, is_temp_name, temp_name, write_durable
from batchd.store import Store
from tests.test_store import make_retry, make_state


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[object, ...]]]:
    """Every ``os.fsync`` (the fd's path, inode and size) and ``os.replace``, in order."""
    events: list[tuple[object, ...]] = []
    real_fsync: Callable[[int], None] = os.fsync
    real_replace = os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), st.st_ino, st.st_size))
        real_fsync(fd)

    def replace(src: str, dst: str, **kwargs: int) -> None:
        events.append(("replace", src, dst))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    yield events
    monkeypatch.undo()


@pytest.fixture
def umask_277() -> Iterator[None]:
    """A umask that would make a plain ``open(..., 0o600)`` read-only (0400)."""
    old = os.umask(0o277)
    yield
    os.umask(old)


def test_write_syncs_the_whole_temp_file_then_renames_then_syncs_the_directory(
    tmp_path: Path, syncs: list[tuple[object, ...]]
) -> None:
    """write_durable: fsync of the complete temp file, its rename over the target, fsync of the dir."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "state.json").write_bytes(b"old")
    data = b'{"new": true}' * 1000
    write_durable(d, "state.json", data)
    final = os.stat(d / "state.json")
    [file_sync, rename, dir_sync] = syncs
    _, temp_path, temp_ino, temp_size = file_sync
    assert rename == ("replace", Path(str(temp_path)).name, "state.json")
    assert Path(str(temp_path)).parent == d and is_temp_name(Path(str(temp_path)).name)
    assert (temp_ino, temp_size) == (final.st_ino, len(data))  # the file that became state.json
    assert dir_sync == ("fsync", str(d), os.stat(d).st_ino, os.stat(d).st_size)
    assert (d / "state.json").read_bytes() == data


def test_a_new_batch_is_synced_file_by_file_and_its_directory_entry_last(
    tmp_path: Path, syncs: list[tuple[object, ...]]
) -> None:
    """create_batch: each state file synced before its rename, the batch dir after, batches/ last."""
    store = Store(tmp_path / "state")
    store.open()
    syncs.clear()
    bdir = store.create_batch(make_state(), make_retry())
    kinds = [(e[0], Path(str(e[1])).name if e[0] == "fsync" else e[2]) for e in syncs]
    temp = [name for kind, name in kinds if kind == "fsync" and is_temp_name(str(name))]
    assert len(temp) == 2
    assert kinds == [
        ("fsync", temp[0]),
        ("replace", "retry_state.json"),
        ("fsync", bdir.name),
        ("fsync", temp[1]),
        ("replace", "state.json"),
        ("fsync", bdir.name),
        ("fsync", "batches"),
    ]


def test_modes_are_set_whatever_the_umask(tmp_path: Path, umask_277: None) -> None:
    """A state file is 0600 and a unit 0644 even under a umask that would strip them."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    write_durable(d, "state.json", b"{}")
    write_durable(d, "batchd.service", b"[Unit]\n", mode=0o644)
    assert stat.S_IMODE(os.stat(d / "state.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d / "batchd.service").st_mode) == 0o644


def test_a_symlink_at_the_target_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """write_durable never writes through, nor replaces, a symlink where the file should be."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    target = tmp_path / "precious"
    target.write_text("mine")
    os.symlink(target, d / "state.json")
    with pytest.raises(StoreError, match="symlink"):
        write_durable(d, "state.json", b"{}")
    assert target.read_text() == "mine" and (d / "state.json").is_symlink()
    assert sorted(os.listdir(d)) == ["state.json"]  # no temp file left


def test_crash_between_temp_write_and_rename_leaves_old_file(tmp_path: Path) -> None:
    """A process killed after writing the temp file but before the rename leaves the old file."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    write_durable(d, "state.json", b'{"old": true}')
    code = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "import batchd.durable as s\n"
        "real = os.replace\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "s.os.replace = die\n"
        f"s.write_durable(Path({str(d)!r}), 'state.json', b'new')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert json.loads((d / "state.json").read_bytes()) == {"old": True}
    # The next write succeeds despite the leftover temp file of the dead process.
    write_durable(d, "state.json", b'{"new": true}')
    assert json.loads((d / "state.json").read_bytes()) == {"new": True}


def test_a_leftover_temp_file_of_the_same_pid_does_not_block_writes(tmp_path: Path) -> None:
    """Regression: in a PID namespace every start gets the same pid, and 0.1.0's temp name
    ``.<name>.<pid>.tmp`` left by a killed start made every later write fail with EEXIST."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / f".state.json.{os.getpid()}.tmp").write_bytes(b"half")
    (d / temp_name("state.json")).write_bytes(b"half")
    for i in range(3):
        write_durable(d, "state.json", f'{{"n": {i}}}'.encode())
    assert json.loads((d / "state.json").read_bytes()) == {"n": 2}


def test_temp_names_are_unique_per_write() -> None:
    """Two writes of one file by one process never share a temp name."""
    names = {temp_name("state.json") for _ in range(1000)}
    assert len(names) == 1000 and all(is_temp_name(n) for n in names)


def test_symlinked_directories_are_refused(tmp_path: Path) -> None:
    """A state dir that is a symlink is refused, as is a shared sticky directory."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    with pytest.raises(StoreError, match="symlink"):
        ensure_dir(tmp_path / "link")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(StoreError, match="shared"):
        ensure_dir(shared)
