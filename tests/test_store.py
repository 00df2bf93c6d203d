"""The state directory: batches written and read back, symlinks refused, quarantine, full disks, the lock."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from batchd import failpoints
from batchd.durable import StoreError, temp_name
from batchd.model import BatchState, RetryState, utc_iso
from batchd.store import Store


def make_state(batch_id: str = "batch-20261124-050653-123456", n: int = 3) -> BatchState:
    stamp = utc_iso(1_800_000_000.0)
    return BatchState(
        batch_id=batch_id,
        seq=1,
        name="n",
        features_file="f.txt",
        source_sha256="0" * 64,
        total_features=n,
        features=[f"feature {i}" for i in range(n)],
        created_at=stamp,
        updated_at=stamp,
    )


def make_retry(batch_id: str = "batch-20261124-050653-123456") -> RetryState:
    stamp = utc_iso(1_800_000_000.0)
    return RetryState(batch_id=batch_id, created_at=stamp, updated_at=stamp)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state")
    s.open()
    return s


def test_round_trip_and_modes(store: Store) -> None:
    """A batch written is read back equal; files are 0600 and directories 0700."""
    state, retry = make_state(), make_retry()
    bdir = store.create_batch(state, retry)
    [(s2, r2)], problems = store.load_batches()
    assert problems == [] and s2 == state and r2 == retry
    for d in (store.root, store.batches, bdir, bdir / "logs"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in (bdir / "state.json", bdir / "retry_state.json", store.root / "batchd.lock"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert not [p for p in bdir.iterdir() if p.name.endswith(".tmp")]


def test_open_and_load_remove_temp_files_left_by_a_kill(tmp_path: Path) -> None:
    """Temp files a killed daemon left (both name formats) go at start; nothing else does."""
    first = Store(tmp_path / "state")
    first.open()
    bdir = first.create_batch(make_state(), make_retry())
    first.close()
    leftovers = [
        tmp_path / "state" / f".daemon.json.{os.getpid()}.tmp",
        tmp_path / "state" / temp_name("user_state.json"),
        bdir / ".state.json.1.tmp",
        bdir / temp_name("retry_state.json"),
    ]
    for p in leftovers:
        p.write_bytes(b"partial")
    keep = [bdir / "state.json", bdir / "retry_state.json", tmp_path / "state" / "notes.txt"]
    keep[2].write_text("mine")
    store = Store(tmp_path / "state")
    store.open()
    [(state, _)], problems = store.load_batches()
    assert problems == [] and state == make_state()
    assert store.temp_files_removed == 4
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in keep)


def test_symlink_in_place_of_state_file_is_refused(store: Store, tmp_path: Path) -> None:
    """A symlink where state.json should be is never written through, nor read."""
    state = make_state()
    bdir = store.create_batch(state, make_retry())
    target = tmp_path / "elsewhere.json"
    target.write_text("precious")
    (bdir / "state.json").unlink()
    os.symlink(target, bdir / "state.json")
    with pytest.raises(StoreError, match="symlink"):
        store.save_state(state)
    assert target.read_text() == "precious"
    found, problems = store.load_batches()
    assert found == [] and problems[0].kind == "corrupt_state"
    assert target.read_text() == "precious"


def test_corrupt_state_is_quarantined_and_others_load(store: Store) -> None:
    """An undecodable state.json moves aside as state.json.corrupt-<ts>; the rest load."""
    good = make_state("batch-20261124-050653-000001")
    bad = make_state("batch-20261124-050653-000002")
    store.create_batch(good, make_retry(good.batch_id))
    bdir = store.create_batch(bad, make_retry(bad.batch_id))
    (bdir / "state.json").write_bytes(b'{"schema_version": 1, "batch_id": ')
    found, problems = store.load_batches()
    assert [s.batch_id for s, _ in found] == [good.batch_id]
    [problem] = problems
    assert problem.kind == "corrupt_state" and problem.batch_id == bad.batch_id
    assert not (bdir / "state.json").exists()
    assert [p.name.startswith("state.json.corrupt-") for p in bdir.iterdir() if "corrupt" in p.name]


def test_wrong_schema_is_quarantined(store: Store) -> None:
    """Valid JSON of the wrong shape is quarantined too, with the reason."""
    state = make_state()
    bdir = store.create_batch(state, make_retry())
    (bdir / "state.json").write_text(json.dumps({"batch_id": state.batch_id}))
    found, problems = store.load_batches()
    assert found == [] and "missing required field" in problems[0].message


def test_full_disk_leaves_previous_file_readable(store: Store, tmp_path: Path) -> None:
    """ENOSPC on a write raises, leaves the old state intact and no temp file behind."""
    state = make_state()
    bdir = store.create_batch(state, make_retry())
    flag = tmp_path / "full"
    flag.write_text("")
    failpoints.configure(f"enospc={flag}")
    try:
        changed = msgspec.structs.replace(state, current_index=2)
        with pytest.raises(OSError) as info:
            store.save_state(changed)
        assert info.value.errno == errno.ENOSPC
    finally:
        failpoints.configure(None)
    assert msgspec.json.decode((bdir / "state.json").read_bytes(), type=BatchState) == state
    assert not [p for p in bdir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to mount a tiny tmpfs")
def test_real_full_tmpfs(tmp_path: Path) -> None:
    """On a real full filesystem the write fails and the old file stays readable."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        store = Store(mnt / "state")
        store.open()
        state = make_state(n=3)
        bdir = store.create_batch(state, make_retry())
        big = msgspec.structs.replace(state, features=["x" * 1000] * 200, total_features=200)
        with pytest.raises(OSError) as info:
            store.save_state(big)
        assert info.value.errno == errno.ENOSPC
        assert msgspec.json.decode((bdir / "state.json").read_bytes(), type=BatchState) == state
        store.close()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_second_lock_fails_with_pid(tmp_path: Path) -> None:
    """A second store on the same state dir is refused and names the holder's pid."""
    first = Store(tmp_path / "s")
    first.open()
    code = f"from batchd.store import Store\nfrom pathlib import Path\nStore(Path({str(tmp_path / 's')!r})).open()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"pid {os.getpid()}" in proc.stderr and "already running" in proc.stderr
    first.close()


def test_audit_append_is_private_and_line_per_event(store: Store) -> None:
    """The audit log is appended one JSON object a line, 0600."""
    from batchd.model import AuditEvent

    state = make_state()
    bdir = store.create_batch(state, make_retry())
    ev = AuditEvent(timestamp=utc_iso(0), event_type="retry_decision", batch_id=state.batch_id)
    store.append_audit(state.batch_id, [ev, ev])
    store.append_audit(state.batch_id, [ev])
    lines = (bdir / "retry_audit.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["event_type"] == "retry_decision"
    assert stat.S_IMODE(os.stat(bdir / "retry_audit.jsonl").st_mode) == 0o600


def test_bad_batch_ids_never_become_paths(store: Store) -> None:
    """An id that is not batch-YYYYMMDD-HHMMSS-ffffff is refused before any path is built."""
    for bad in ("../x", "batch-1", "batch-20261124-050653-123456/../../etc", ""):
        with pytest.raises(ValueError):
            store.batch_dir(bad)


def test_state_encoder_gives_the_plain_encoding_at_every_step() -> None:
    """The cached encoder writes byte for byte what msgspec writes, through every transition."""
    import random

    from batchd.batch import Batch
    from batchd.classify import Verdict
    from batchd.stateenc import StateEncoder
    from batchd.store import encode
    from batchd.transitions import Settings

    rng = random.Random(5)
    state = make_state(n=40)
    batch = Batch(state, make_retry())
    enc = StateEncoder()
    now = 1_800_000_000.0
    assert enc.encode(batch.state) == encode(batch.state)
    while not batch.finished:
        now += 1
        index = batch.state.current_index
        batch.begin(index=index, now=now, pid=100 + index, pid_start_time=7)
        assert enc.encode(batch.state) == encode(batch.state)
        roll = rng.random()
        if roll < 0.2:
            batch.mark_interrupted(now + 0.5, "stopped")
        else:
            verdict = Verdict("completed") if roll < 0.7 else Verdict("failed", "transient", "boom")
            batch.record(
                verdict,
                exit_code=0,
                consent=True,
                hint_s=None,
                settings=Settings(),
                now=now + 0.5,
                rand=rng.random,
            )
        assert enc.encode(batch.state) == encode(batch.state)
    assert msgspec.json.decode(enc.encode(batch.state), type=BatchState) == batch.state


def test_half_created_batch_dir_is_removed(store: Store) -> None:
    """A batch dir without state.json and without source (killed mid-create) is cleaned away."""
    bdir = store.batches / "batch-20261124-050653-000009"
    (bdir / "logs").mkdir(parents=True)
    (bdir / "retry_state.json").write_text("{}")
    found, problems = store.load_batches()
    assert found == [] and problems == [] and not bdir.exists()
