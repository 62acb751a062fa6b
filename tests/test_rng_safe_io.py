"""Safe file IO (atomic writes, torch load refusal) and RNG capture/restore, on real files."""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from rayrl.checkpoint import (
    TEMP_PREFIX,
    CheckpointError,
    CheckpointInvalid,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    capture_rng_state,
    load_torch,
    restore_rng_state,
    save_torch,
)


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG, like a full disk; works as root, unlike chmod.

    Python ignores SIGXFSZ, so the write raises OSError instead of killing the process.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_atomic_writes_replace_content(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"old")
    atomic_write_bytes(tmp_path / "a.bin", b"new")
    atomic_write_text(tmp_path / "t.txt", "h\u00e9")
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "h\u00e9"
    assert (tmp_path / "j.json").read_text().startswith('{\n  "a"')
    assert _leftovers(tmp_path) == []


def test_failed_atomic_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"good")
    with file_size_limit(1 << 20), pytest.raises(OSError):
        atomic_write_bytes(target, b"x" * (2 << 20))
    assert target.read_bytes() == b"good"
    assert _leftovers(tmp_path) == []


def test_failed_save_torch_keeps_old_file(tmp_path):
    target = tmp_path / "data.pt"
    save_torch({"w": torch.arange(4)}, target)
    with file_size_limit(1 << 20), pytest.raises((OSError, RuntimeError)):  # torch reports EFBIG as RuntimeError
        save_torch({"w": torch.zeros(1 << 20)}, target)
    assert torch.equal(load_torch(target)["w"], torch.arange(4))
    assert _leftovers(tmp_path) == []


def test_save_load_torch_round_trip(tmp_path):
    obj = {"t": torch.randn(3, 2), "n": 7, "s": "x", "l": [1.5, None], "tup": (1, 2)}
    save_torch(obj, tmp_path / "o.pt")
    back = load_torch(tmp_path / "o.pt")
    assert torch.equal(back["t"], obj["t"]) and back["t"].device.type == "cpu"
    assert {k: v for k, v in back.items() if k != "t"} == {k: v for k, v in obj.items() if k != "t"}


class _Evil:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_load_torch_refuses_code_and_runs_none(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    with open(path, "wb") as f:
        if writer == "pickle":
            pickle.dump({"x": _Evil(marker)}, f, protocol=2)
        else:
            torch.save({"x": _Evil(marker)}, f)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        load_torch(path)
    assert info.value.path == str(path) and "weights_only" in info.value.reason
    assert not marker.exists()


def test_load_torch_missing_and_truncated(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torch(tmp_path / "nope.pt")
    save_torch({"w": torch.ones(100)}, tmp_path / "t.pt")
    data = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_torch(tmp_path / "t.pt")


def test_errors_survive_pickling():
    # Ray ships worker exceptions to the caller through pickle.
    err = pickle.loads(pickle.dumps(CheckpointInvalid("/x/global_step_3", "missing file a")))
    assert isinstance(err, CheckpointInvalid)
    assert (err.path, err.reason) == ("/x/global_step_3", "missing file a")
    assert str(err) == "/x/global_step_3: missing file a"


def _draw() -> tuple:
    return (
        [random.random() for _ in range(5)],
        np.random.rand(5).tolist(),
        np.random.standard_normal(),  # exercises numpy's cached gaussian
        torch.rand(5).tolist(),
    )


def test_rng_restore_replays_the_same_numbers():
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    first = _draw()
    _draw()
    restore_rng_state(state)
    assert _draw() == first


def test_rng_state_round_trips_through_weights_only_files(tmp_path):
    state = capture_rng_state()
    first = _draw()
    save_torch(state, tmp_path / "rng.pt")
    _draw()
    restore_rng_state(load_torch(tmp_path / "rng.pt"))
    assert _draw() == first


def test_restore_rng_state_rejects_incomplete_state():
    state = capture_rng_state()
    del state["numpy"]
    with pytest.raises(ValueError, match="numpy"):
        restore_rng_state(state)
